"""Renderers of a :class:`~gradscope.report.HessianReport`: table and CSV.

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
from gradscope.render.table import (
    Column,
    fmt_float,
    make_console,
    make_table,
    run_lines,
    strip_trailing_spaces,
    summary_grid,
)
from gradscope.report import HessianBlock, HessianReport

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
)


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


def blocks_table(report: HessianReport) -> Table:
    """One row per block: size, method, extreme eigenvalues, trace, norms, time."""
    rows = [_block_cells(block) for block in report.blocks]
    notes = [_note(block) for block in report.blocks]
    return make_table("Hessian blocks", BLOCK_COLUMNS, rows, notes)


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
    """The report as a header and one table of blocks."""
    buffer = io.StringIO()
    parts: list[RenderableType] = [summary_grid(run_lines(report)), Text(""), blocks_table(report)]
    if report.cross:
        parts.extend([Text(""), cross_table(report)])
    make_console(buffer, width, color).print(Group(*parts))
    return strip_trailing_spaces(buffer.getvalue())


def format_csv(report: HessianReport) -> str:
    """One row per block; list fields are space-separated."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for block in report.blocks:
        data = block.to_dict()
        writer.writerow(
            {
                key: " ".join(str(v) for v in data[key])
                if isinstance(data[key], list)
                else ("" if data[key] is None else data[key])
                for key in CSV_COLUMNS
            }
        )
    return buffer.getvalue()
