"""Human-readable renderer: a short header, then one rich table per kind of tensor.

Every table cell is a :class:`rich.text.Text`, never a ``str``: rich parses ``str`` cells
as console markup, and layer names such as ``dense[0]`` must print verbatim.  Numbers use
one compact formatter (:func:`fmt_float`) so that all columns line up and read alike;
exact values are in the JSON and CSV outputs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Literal

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradscope.health import Health, layer_norms
from gradscope.render import format_shape
from gradscope.report import (
    ActivationRow,
    BatchesReport,
    BatchInfo,
    HessianReport,
    InputRow,
    LossInfo,
    ModelInfo,
    NormSpread,
    PerSampleReport,
    PerSampleRow,
    Report,
    TensorStats,
    VariableRow,
)

__all__ = [
    "MISSING",
    "activations_table",
    "fmt_float",
    "fmt_general",
    "fmt_percent",
    "format_report",
    "header",
    "inputs_table",
    "make_console",
    "variables_table",
]

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


def run_lines(report: Report | HessianReport) -> list[tuple[str, str]]:
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


def _log_scale(values: Sequence[float]) -> tuple[float, float] | None:
    """The range of log10 over the finite positive ``values``, or ``None``."""
    logs = [math.log10(v) for v in values if math.isfinite(v) and v > 0]
    return (min(logs), max(logs)) if logs else None


def _fraction(value: float, scale: tuple[float, float]) -> float:
    low, high = scale
    return 1.0 if high == low else (math.log10(value) - low) / (high - low)


def sparkline(values: Sequence[float]) -> str:
    """One character per value, its height by log10: ``·`` for zero, ``×`` for NaN/Inf."""
    scale = _log_scale(values)
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


def gradient_profile(report: Report) -> str | None:
    """``▁▂▄█  1.2e-07 … 6.2e-01 (input → output)``: log10 of each layer's gradient norm,
    layers in forward order, so vanishing or exploding gradients show at a glance."""
    norms = [layer.grad_l2 for layer in layer_norms(report.variables)]
    scale = _log_scale(norms)
    if len(norms) < 2 or scale is None:
        return None
    return f"{sparkline(norms)}  {10 ** scale[0]:.1e} … {10 ** scale[1]:.1e} (input → output)"


def _spread(spread: NormSpread) -> str:
    return f"{fmt_float(spread.min)} / {fmt_float(spread.median)} / {fmt_float(spread.max)}"


def header(report: Report) -> Table:
    """The summary block above the tables: model, batch, loss, mode, global norm."""
    lines = [*run_lines(report), ("global ‖g‖", fmt_float(report.global_grad_norm))]
    profile = gradient_profile(report)
    if profile is not None:
        lines.append(("‖g‖ by layer", profile))
    if report.batches is not None:
        batches = report.batches
        lines[2 + len(report.model.notes) : 2 + len(report.model.notes)] = [
            (
                "batches",
                f"{batches.count} of {batches.batch_size:,} rows; the rows below describe "
                "their mean gradient",
            ),
            ("batch loss", f"{_spread(batches.losses)} (min / median / max)"),
            ("batch ‖g‖", f"{_spread(batches.global_norms)} (min / median / max)"),
        ]
    return summary_grid(lines)


# --- tables -----------------------------------------------------------------------------


ColumnKind = Literal["path", "text", "num"]
"""``path`` folds onto more lines (never cut), ``text`` stays on one line, ``num`` too,
right-aligned."""

Column = tuple[str, ColumnKind]
"""A column header and its kind."""

VARIABLE_COLUMNS: tuple[Column, ...] = (
    ("layer", "path"),
    ("class", "text"),
    ("variable", "path"),
    ("shape", "text"),
    ("‖g‖", "num"),
    ("max|g|", "num"),
    ("‖g‖/‖w‖", "num"),
    ("zeros", "num"),
    ("non-finite", "num"),
)

ACTIVATION_COLUMNS: tuple[Column, ...] = (
    ("path", "path"),
    ("class", "text"),
    ("shape", "text"),
    ("‖g‖", "num"),
    ("log ‖g‖", "text"),
    ("max|g|", "num"),
    ("‖a‖", "num"),
    ("dead", "num"),
    ("zeros", "num"),
    ("non-finite", "num"),
)

INPUT_COLUMNS: tuple[Column, ...] = (
    ("name", "path"),
    ("shape", "text"),
    ("dtype", "text"),
    ("‖g‖", "num"),
    ("max|g|", "num"),
    ("non-finite", "num"),
)


def _grad_cells(grad: TensorStats | None) -> tuple[Text, Text]:
    """The ``‖g‖`` and ``max|g|`` cells (``—`` when there is no gradient)."""
    if grad is None:
        return Text(MISSING), Text(MISSING)
    return Text(fmt_float(grad.l2)), Text(fmt_float(grad.max_abs))


def _zeros_cell(grad: TensorStats | None) -> Text:
    """Fraction of exact zeros in the gradient, as a percentage."""
    return Text(fmt_percent(None if grad is None else grad.zero_frac))


def _nonfinite_cell(grad: TensorStats | None) -> Text:
    """Non-finite count; red (visible only with colour on) when there are any."""
    if grad is None:
        return Text(MISSING)
    count = int(grad.nonfinite)
    return Text(str(count), style="bold red" if count > 0 else "")


def variable_cells(row: VariableRow) -> list[Text]:
    """Cells of one row of the variables table, in :data:`VARIABLE_COLUMNS` order."""
    return [
        Text(row.layer),
        Text(row.layer_class),
        Text(row.path),
        Text(format_shape(row.shape)),
        *_grad_cells(row.grad),
        Text(fmt_float(row.ratio)),
        _zeros_cell(row.grad),
        _nonfinite_cell(row.grad),
    ]


def activation_cells(row: ActivationRow, scale: tuple[float, float] | None = None) -> list[Text]:
    """Cells of one row of the layer-output table, in :data:`ACTIVATION_COLUMNS` order;
    ``scale`` is the log10 range of the gradient norms the bars share."""
    value = row.value
    norm, largest = _grad_cells(row.grad)
    return [
        Text(row.path),
        Text(row.layer_class),
        Text(format_shape(row.shape)),
        norm,
        Text(log_bar(None if row.grad is None else row.grad.l2, scale), style="cyan"),
        largest,
        Text(fmt_float(None if value is None else value.l2)),
        Text(fmt_percent(None if value is None else value.dead_frac)),
        _zeros_cell(row.grad),
        _nonfinite_cell(row.grad),
    ]


def input_cells(row: InputRow) -> list[Text]:
    """Cells of one row of the inputs table, in :data:`INPUT_COLUMNS` order."""
    return [
        Text(row.name),
        Text(format_shape(row.shape)),
        Text(row.dtype),
        *_grad_cells(row.grad),
        _nonfinite_cell(row.grad),
    ]


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


def variables_table(variables: Sequence[VariableRow]) -> Table:
    """Gradient per trainable variable, in report order."""
    rows = [variable_cells(row) for row in variables]
    notes = [variable_note(row) for row in variables]
    return make_table("Gradients by variable", VARIABLE_COLUMNS, rows, notes)


def variable_note(row: VariableRow) -> str | None:
    """The note cell of a variable row: its note, and for a LoRA adapter the frozen
    weight it adapts (``LoRA of dense/kernel``)."""
    parts = [part for part in (row.note, row.adapts and f"LoRA of {row.adapts}") if part]
    return "; ".join(parts) if parts else None


def activations_table(activations: Sequence[ActivationRow]) -> Table:
    """Gradient per layer output, with the output's own norm and dead-unit fraction."""
    scale = _log_scale([r.grad.l2 for r in activations if r.grad is not None])
    rows = [activation_cells(row, scale) for row in activations]
    notes = [row.note for row in activations]
    return make_table("Gradients by layer output", ACTIVATION_COLUMNS, rows, notes)


def inputs_table(inputs: Sequence[InputRow]) -> Table:
    """Gradient per model input (integer inputs have none, and say so in the note)."""
    rows = [input_cells(row) for row in inputs]
    notes = [row.note for row in inputs]
    return make_table("Gradients by input", INPUT_COLUMNS, rows, notes)


SPREAD_COLUMNS: tuple[Column, ...] = (
    ("variable", "path"),
    ("‖g‖ min", "num"),
    ("median", "num"),
    ("max", "num"),
    ("E‖g−ḡ‖²", "num"),
    ("SNR", "num"),
)

PER_SAMPLE_COLUMNS: tuple[Column, ...] = (
    ("variable", "path"),
    ("‖gᵢ‖ min", "num"),
    ("median", "num"),
    ("max", "num"),
    ("largest (example: ‖gᵢ‖)", "text"),
)


def batches_table(batches: BatchesReport) -> Table:
    """Per variable across batches: per-batch norms, spread around the mean, SNR."""
    rows = [
        [
            Text(row.path),
            *(Text(fmt_float(v)) for v in (row.norms.min, row.norms.median, row.norms.max)),
            Text(fmt_float(row.variance)),
            Text(fmt_float(row.snr)),
        ]
        for row in batches.variables
    ]
    title = f"Across {batches.count} batches"
    return make_table(title, SPREAD_COLUMNS, rows, [None] * len(rows))


def _per_sample_cells(row: PerSampleRow) -> list[Text]:
    largest = ", ".join(f"{i}: {fmt_float(n)}" for i, n in zip(row.top, row.top_norms, strict=True))
    spread = (row.norms.min, row.norms.median, row.norms.max)
    return [Text(row.path), *(Text(fmt_float(v)) for v in spread), Text(largest)]


def per_sample_table(per_sample: PerSampleReport) -> Table:
    """Per-example gradient norms: all variables first, then each variable."""
    rows = [_per_sample_cells(per_sample.total)]
    rows += [_per_sample_cells(row) for row in per_sample.variables]
    title = f"Per-example gradient norms ({per_sample.examples:,} examples)"
    return make_table(title, PER_SAMPLE_COLUMNS, rows, [None] * len(rows))


def renderables(report: Report) -> list[RenderableType]:
    """Header, then each non-empty table, separated by blank lines."""
    tables: list[Table] = []
    if report.variables:
        tables.append(variables_table(report.variables))
    if report.batches is not None and report.batches.variables:
        tables.append(batches_table(report.batches))
    if report.per_sample is not None:
        tables.append(per_sample_table(report.per_sample))
    if report.activations:
        tables.append(activations_table(report.activations))
    if report.inputs:
        tables.append(inputs_table(report.inputs))
    parts: list[RenderableType] = [header(report)]
    for table in tables:
        parts.extend([Text(""), table])
    if report.health is not None:
        parts.extend([Text(""), health_footer(report.health)])
    return parts


def health_footer(health: Health) -> Text:
    """``Health: ok``, or one line per finding, its kind in bold red."""
    if not health.findings:
        return Text.assemble(("Health", "bold"), ": no findings")
    text = Text.assemble(("Health", "bold"), f": {len(health.findings)} findings")
    for finding in health.findings:
        text.append("\n  ")
        text.append(finding.kind, style="bold red")
        text.append(f"  {finding.message}")
    return text


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


def format_report(report: Report, *, width: int | None = None, color: bool = False) -> str:
    """The report as text tables, no line wider than ``width`` (default 120) cells.

    With ``color`` the text contains ANSI escapes (bold headers, red non-finite counts,
    dim notes); without it the output is plain text.  Empty sections are left out.
    """
    buffer = io.StringIO()
    console = make_console(buffer, width, color)
    console.print(Group(*renderables(report)))
    return strip_trailing_spaces(buffer.getvalue())
