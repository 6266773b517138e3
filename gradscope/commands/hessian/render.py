"""Renderers of a :class:`~gradscope.commands.hessian.report.HessianReport`: table and CSV.

JSON is ``report.to_json()``, as for ``inspect``.  The table reuses the inspect table's
building blocks (header grid, light tables, number formatting).
"""

from __future__ import annotations

import csv
import io

import numpy as np
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradscope.engine.spectral import SpectralDensity, text_density
from gradscope.render import OutputFormat, by_format, json
from gradscope.render.table import (
    Column,
    fmt_float,
    make_console,
    make_table,
    run_lines,
    strip_trailing_spaces,
    summary_grid,
)

from .report import HessianBlock, HessianReport

BLOCK_COLUMNS: tuple[Column, ...] = (
    ("vars", "path"),
    ("n", "num"),
    ("method", "text"),
    ("top eigenvalues", "text"),
    ("min", "num"),
    ("trace", "num"),
    ("frobenius", "num"),
    ("condition", "num"),
    ("time", "num"),
)

CSV_COLUMNS = (
    "kind",
    "vars",
    "layers",
    "size",
    "method",
    "eigenvalues",
    "min_eigenvalue",
    "trace",
    "trace_stderr",
    "frobenius",
    "condition",
    "negative_count",
    "asymmetry",
    "iterations",
    "converged",
    "seconds",
    "shape",
    "max_abs",
    "eigenvalue",
    "density",
)
"""One table for everything: ``kind`` is ``block`` (a row per block), ``cross`` (a row
per off-diagonal block: ``vars``, ``shape``, ``frobenius``, ``max_abs``) or ``density``
(a row per grid point of a block's spectral density: ``vars``, ``eigenvalue``,
``density``).  Cells a kind does not use are empty."""


def _trace_text(block: HessianBlock) -> str:
    if block.trace is None:
        return "n/a"
    if block.trace_stderr is None:
        return fmt_float(block.trace)
    return f"{fmt_float(block.trace)} ±{block.trace_stderr:.1e}"


def _vars_text(paths: tuple[str, ...]) -> str:
    """Up to three variable paths, then a count of the rest (the JSON lists them all)."""
    shown = ", ".join(paths[:3])
    return shown if len(paths) <= 3 else f"{shown} (+{len(paths) - 3} more)"


def _block_cells(block: HessianBlock) -> list[Text]:
    return [
        Text(_vars_text(block.vars)),
        Text(f"{block.size:,}"),
        Text(block.method),
        Text(" ".join(fmt_float(e) for e in block.eigenvalues)),
        Text(fmt_float(block.min_eigenvalue)),
        Text(_trace_text(block)),
        Text("n/a" if block.frobenius is None else fmt_float(block.frobenius)),
        Text("n/a" if block.condition is None else fmt_float(block.condition)),
        Text(f"{block.seconds:.2f}s"),
    ]


def _note(block: HessianBlock) -> str | None:
    notes = []
    if block.method == "lanczos":
        state = "converged" if block.converged else "NOT converged"
        notes.append(f"{block.iterations} HVPs, {state}")
    if block.negative_count:
        notes.append(f"{block.negative_count} negative")
    if block.density is not None:
        grid, values = np.asarray(block.density.grid), np.asarray(block.density.values)
        density = SpectralDensity(grid=grid, density=values, runs=0, iterations=0, sigma=0.0)
        lo, hi = block.density.grid[0], block.density.grid[-1]
        notes.append(f"density [{fmt_float(lo)}, {fmt_float(hi)}] {text_density(density, 24)}")
    return "; ".join(notes) or None


MATRIX_NAMES = {
    "hessian": "Hessian",
    "ggn": "generalized Gauss-Newton",
    "fisher": "Fisher",
    "empirical-fisher": "empirical Fisher",
}
"""How the table names each curvature matrix."""


def _matrix_line(report: HessianReport) -> str:
    name = MATRIX_NAMES.get(report.matrix, report.matrix)
    if report.mc_samples is not None:
        return f"{name} (Monte Carlo, {report.mc_samples} draw(s) per example)"
    return name


def blocks_table(report: HessianReport) -> Table:
    """One row per block: size, method, extreme eigenvalues, trace, norms, time."""
    rows = [_block_cells(block) for block in report.blocks]
    notes = [_note(block) for block in report.blocks]
    title = f"{MATRIX_NAMES.get(report.matrix, report.matrix)} blocks"
    return make_table(title[0].upper() + title[1:], BLOCK_COLUMNS, rows, notes)


DIAGONAL_COLUMNS: tuple[Column, ...] = (
    ("var", "path"),
    ("method", "text"),
    ("mean", "num"),
    ("max", "num"),
    ("sum", "num"),
    ("sharpest [index] value", "text"),
)


def _with_error(value: float, error: float | None) -> str:
    return fmt_float(value) if error is None else f"{fmt_float(value)} ±{error:.1e}"


def diagonal_table(report: HessianReport) -> Table:
    """One row per variable: its diagonal's mean, max and sum, and its top entries."""
    rows = []
    for block in report.blocks:
        for item in block.diagonals or ():
            sharpest = "  ".join(
                f"[{','.join(map(str, p.index))}] {fmt_float(p.value)}" for p in item.top
            )
            rows.append(
                [
                    Text(item.var),
                    Text(item.method),
                    Text(_with_error(item.mean, item.mean_stderr)),
                    Text(fmt_float(item.max)),
                    Text(_with_error(item.sum, item.sum_stderr)),
                    Text(sharpest),
                ]
            )
    return make_table("Diagonal", DIAGONAL_COLUMNS, rows, [None] * len(rows))


CROSS_COLUMNS: tuple[Column, ...] = (
    ("vars", "path"),
    ("shape", "text"),
    ("frobenius", "num"),
    ("max|entry|", "num"),
)


def cross_table(report: HessianReport) -> Table:
    """One row per pair of variables: the off-diagonal block's norms."""
    rows = [
        [
            Text(" × ".join(c.vars)),
            Text(f"{c.shape[0]}x{c.shape[1]}"),
            Text(fmt_float(c.frobenius)),
            Text(fmt_float(c.max_abs)),
        ]
        for c in report.cross
    ]
    return make_table("Cross blocks", CROSS_COLUMNS, rows, [None] * len(rows))


def format_table(report: HessianReport, *, width: int | None = None, color: bool = False) -> str:
    """The report as a header (with the run's fallback notes) and one table of blocks."""
    buffer = io.StringIO()
    lines = [
        *run_lines(report),
        ("matrix", _matrix_line(report)),
        *(("note", note) for note in report.notes),
    ]
    parts: list[RenderableType] = [summary_grid(lines), Text(""), blocks_table(report)]
    if any(block.diagonals for block in report.blocks):
        parts.extend([Text(""), diagonal_table(report)])
    if report.cross:
        parts.extend([Text(""), cross_table(report)])
    make_console(buffer, width, color).print(Group(*parts))
    return strip_trailing_spaces(buffer.getvalue())


def _csv_cell(value: object) -> object:
    """Lists space-separated, ``None`` empty, everything else as is."""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return "" if value is None else value


def _csv_rows(report: HessianReport) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for block in report.blocks:
        data = block.to_dict()
        rows.append({"kind": "block", **{k: data[k] for k in CSV_COLUMNS[1:] if k in data}})
    for cross in report.cross:
        rows.append({"kind": "cross", **cross.to_dict()})
    for block in report.blocks:
        if block.density is None:
            continue
        for point, value in zip(block.density.grid, block.density.values, strict=True):
            rows.append(
                {"kind": "density", "vars": list(block.vars), "eigenvalue": point, "density": value}
            )
    return rows


def format_csv(report: HessianReport) -> str:
    """Blocks, then cross blocks, then density points (see :data:`CSV_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in _csv_rows(report):
        writer.writerow({key: _csv_cell(row.get(key)) for key in CSV_COLUMNS})
    return buffer.getvalue()


def render(report: HessianReport, fmt: OutputFormat, *, width: int | None, color: bool) -> str:
    """``report`` as a table, JSON or CSV (see :func:`gradscope.render.render`)."""
    return by_format(
        fmt,
        table=lambda: format_table(report, width=width, color=color),
        json=lambda: json.format_report(report),
        csv=lambda: format_csv(report),
    )
