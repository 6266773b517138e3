"""Table primitives shared by every command's human-readable renderer.

Every table cell is a :class:`rich.text.Text`, never a ``str``: rich parses ``str`` cells
as console markup, and layer names such as ``dense[0]`` must print verbatim.  Numbers use
one compact formatter (:func:`fmt_float`) so that all columns line up and read alike;
exact values are in the JSON and CSV outputs.  ``inspect``'s own tables live in
:mod:`gradscope.commands.inspect.render`; their old names here still resolve, with a
``DeprecationWarning``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Literal

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradscope._deprecated import forwarder
from gradscope.report import BatchInfo, LossInfo, ModelInfo, _JsonMixin

__all__ = [
    "MISSING",
    "Column",
    "fmt_float",
    "fmt_general",
    "fmt_percent",
    "make_console",
    "make_table",
    "summary_grid",
]

__getattr__ = forwarder(
    "gradscope.render.table",
    ("gradscope.commands.inspect.render",),
    renames={"format_report": "format_table"},
)

MISSING = "—"
"""Shown for a value that does not exist (no gradient, no weights, scalar output...)."""

DEFAULT_WIDTH = 120


def fmt_float(value: float | None) -> str:
    """A float in 4 significant digits (``1.235e+00``), ``0`` for zero, ``nan``/``inf``.

    Gradient magnitudes span many orders of magnitude, so scientific notation is the only
    fixed-width format that keeps them comparable down a column.
    """
    if value is None:
        return MISSING
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    return f"{value:.3e}"


def fmt_percent(fraction: float | None) -> str:
    """A fraction in ``[0, 1]`` as a percentage with one decimal (``0.125`` → ``12.5%``)."""
    if fraction is None:
        return MISSING
    fraction = float(fraction)
    if not math.isfinite(fraction):
        return fmt_float(fraction)
    return f"{100.0 * fraction:.1f}%"


def fmt_general(value: float) -> str:
    """A headline number (loss, regularization) in 6 significant digits; ``nan``/``inf``."""
    return f"{float(value):.6g}"


# --- header -----------------------------------------------------------------------------


def model_line(model: ModelInfo) -> str:
    """``name (Class) — path (format), N trainable params``."""
    where = f"{model.path} ({model.format})" if model.path else model.format
    return (
        f"{model.name} ({model.class_name}) — {where}, {model.trainable_params:,} trainable params"
    )


def batch_line(batch: BatchInfo) -> str:
    """Where the batch came from and its size, and whether it has targets."""
    if batch.source == "synthetic":
        origin = "synthetic" if batch.seed is None else f"synthetic (seed {batch.seed})"
    else:
        origin = f"file {batch.path}"
    line = f"{origin}, {batch.size:,} rows"
    return line if batch.has_targets else f"{line}, no targets"


def loss_line(loss: LossInfo) -> str:
    """Loss value and source, plus the regularization part when there is one."""
    line = f"{fmt_general(loss.value)} ({loss.source})"
    if loss.regularization != 0:
        terms = loss.regularization_terms
        plural = "" if terms == 1 else "s"
        line += f", incl. regularization {fmt_general(loss.regularization)} ({terms} term{plural})"
    return line


def summary_grid(lines: Sequence[tuple[str, str]]) -> Table:
    """A borderless two-column grid of label/value lines (the block above the tables)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in lines:
        grid.add_row(Text(label), Text(value))
    return grid


def run_lines(report: _JsonMixin) -> list[tuple[str, str]]:
    """The summary lines every report starts with: model, batch, loss, mode."""
    return [
        ("model", model_line(report.model)),
        *(("note", note) for note in report.model.notes),
        ("batch", batch_line(report.batch)),
        ("loss", loss_line(report.loss)),
        ("mode", "training" if report.training else "inference"),
    ]


SPARK_LEVELS = "▁▂▃▄▅▆▇█"
BAR_EIGHTHS = " ▏▎▍▌▋▊▉█"
BAR_WIDTH = 8


def log_scale(values: Sequence[float]) -> tuple[float, float] | None:
    """The range of log10 over the finite positive ``values``, or ``None``."""
    logs = [math.log10(v) for v in values if math.isfinite(v) and v > 0]
    return (min(logs), max(logs)) if logs else None


def _fraction(value: float, scale: tuple[float, float]) -> float:
    low, high = scale
    return 1.0 if high == low else (math.log10(value) - low) / (high - low)


def sparkline(values: Sequence[float]) -> str:
    """One character per value, its height by log10: ``·`` for zero, ``×`` for NaN/Inf."""
    scale = log_scale(values)
    chars = []
    for value in values:
        if not math.isfinite(value):
            chars.append("×")
        elif value <= 0 or scale is None:
            chars.append("·")
        else:
            level = round(_fraction(value, scale) * (len(SPARK_LEVELS) - 1))
            chars.append(SPARK_LEVELS[level])
    return "".join(chars)


def linear_sparkline(values: Sequence[float], scale: tuple[float, float] | None = None) -> str:
    """One character per value, its height linear between ``scale``'s ends (default: the
    finite values' minimum and maximum): ``×`` for NaN/Inf.  For curves (a loss along a
    line), where differences matter, not orders of magnitude."""
    finite = [v for v in values if math.isfinite(v)]
    low, high = scale or ((min(finite), max(finite)) if finite else (0.0, 0.0))
    top = len(SPARK_LEVELS) - 1
    chars = []
    for value in values:
        if not math.isfinite(value):
            chars.append("×")
            continue
        fraction = 0.0 if high <= low else (value - low) / (high - low)
        chars.append(SPARK_LEVELS[min(top, max(0, round(fraction * top)))])
    return "".join(chars)


def log_bar(value: float | None, scale: tuple[float, float] | None) -> str:
    """A bar of :data:`BAR_WIDTH` cells whose length is ``value`` on the log ``scale``."""
    if value is None or scale is None:
        return ""
    if not math.isfinite(value):
        return "×"
    if value <= 0:
        return "·"
    eighths = round((0.05 + 0.95 * _fraction(value, scale)) * BAR_WIDTH * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (BAR_EIGHTHS[part] if part else "")).ljust(BAR_WIDTH)


# --- tables -----------------------------------------------------------------------------


ColumnKind = Literal["path", "text", "num"]
"""``path`` folds onto more lines (never cut), ``text`` stays on one line, ``num`` too,
right-aligned."""

Column = tuple[str, ColumnKind]
"""A column header and its kind."""


def _add_column(table: Table, header: str, kind: ColumnKind) -> None:
    """Paths fold onto more lines rather than being cut; other columns stay on one line."""
    if kind == "path":
        table.add_column(header, overflow="fold")
    elif kind == "num":
        table.add_column(header, justify="right", no_wrap=True)
    else:
        table.add_column(header, no_wrap=True)


def make_table(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[list[Text]],
    notes: Sequence[str | None],
) -> Table:
    """A light table; a dim ``note`` column is appended only when some row has a note."""
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        header_style="bold",
    )
    for header_text, kind in columns:
        _add_column(table, header_text, kind)
    has_notes = any(note is not None for note in notes)
    if has_notes:
        table.add_column("note", style="dim", overflow="fold")
    for cells, note in zip(rows, notes, strict=True):
        table.add_row(*cells, *([Text(note or "")] if has_notes else []))
    return table


def make_console(file: io.StringIO, width: int | None = None, color: bool = False) -> Console:
    """A console that renders into ``file``, independent of the real terminal.

    Width and colour are fixed by the caller rather than detected, so the output is the
    same whether stdout is a terminal, a pipe or a test.
    """
    return Console(
        file=file,
        width=width or DEFAULT_WIDTH,
        color_system="standard" if color else None,
        force_terminal=color,
        highlight=False,
    )


def strip_trailing_spaces(text: str) -> str:
    """Drop the padding rich adds up to the full width, so lines end at their content."""
    return "\n".join(line.rstrip(" ") for line in text.split("\n"))
