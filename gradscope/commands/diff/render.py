"""Renderers of a :class:`~gradscope.commands.diff.report.DiffReport`: table, JSON and CSV.

The table reuses the inspect table's building blocks (header grid, light tables, number
formatting).  A ratio that does not exist is shown as ``inf``, ``0/0`` or ``—``, and the
``note`` column says why in words; the JSON has ``null`` and a ``reason`` code instead.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradscope.commands.diff.report import (
    REASONS,
    Change,
    CheckResult,
    DiffReport,
    NonfiniteChange,
    ReportSide,
)
from gradscope.render import OutputFormat, by_format
from gradscope.render.csv import format_float
from gradscope.render.table import (
    MISSING,
    Column,
    fmt_float,
    fmt_general,
    make_console,
    make_table,
    strip_trailing_spaces,
    summary_grid,
)

__all__ = ["CSV_COLUMNS", "format_csv", "format_json", "format_table"]

TOP_COLUMNS: tuple[Column, ...] = (
    ("kind", "text"),
    ("path", "path"),
    ("quantity", "text"),
    ("A", "num"),
    ("B", "num"),
    ("B/A", "num"),
    ("log10", "num"),
)

VARIABLE_COLUMNS: tuple[Column, ...] = (
    ("variable", "path"),
    ("‖g‖ A", "num"),
    ("‖g‖ B", "num"),
    ("B/A", "num"),
    ("log10", "num"),
    ("‖g‖/‖w‖ A", "num"),
    ("‖g‖/‖w‖ B", "num"),
    ("B/A", "num"),
    ("‖w‖ B/A", "num"),
)

ACTIVATION_COLUMNS: tuple[Column, ...] = (
    ("path", "path"),
    ("class", "text"),
    ("‖g‖ A", "num"),
    ("‖g‖ B", "num"),
    ("B/A", "num"),
    ("log10", "num"),
    ("‖a‖ A", "num"),
    ("‖a‖ B", "num"),
    ("‖a‖ B/A", "num"),
)

PRESENCE_COLUMNS: tuple[Column, ...] = (("kind", "text"), ("path", "path"), ("change", "text"))

NONFINITE_COLUMNS: tuple[Column, ...] = (
    ("kind", "text"),
    ("path", "path"),
    ("quantity", "text"),
    ("non-finite A", "num"),
    ("non-finite B", "num"),
    ("change", "text"),
)

QUANTITY_NAMES = {"grad_l2": "‖g‖", "weight_l2": "‖w‖", "value_l2": "‖a‖"}
"""How the table names the quantities of the ``top`` list."""


# --- cells ------------------------------------------------------------------------------


def ratio_text(change: Change) -> str:
    """``B/A`` in the inspect number format; ``inf`` or ``0/0`` when it has no value."""
    if change.ratio is not None:
        return fmt_float(change.ratio)
    if change.reason in ("zero_a", "overflow"):
        return "inf"
    return "0/0" if change.reason == "zero_both" else MISSING


def log10_text(change: Change) -> str:
    """``log10(B/A)`` with a sign and 3 decimals (``+0.602``); ``±inf`` from or to zero."""
    if change.log10_ratio is not None:
        return f"{change.log10_ratio + 0.0:+.3f}"
    if change.reason == "zero_a":
        return "+inf"
    if change.reason == "zero_b":
        return "-inf"
    return "0/0" if change.reason == "zero_both" else MISSING


def _change_cells(change: Change, *, with_values: bool = True, with_log: bool = True) -> list[Text]:
    """The ``A``, ``B``, ``B/A`` and ``log10`` cells of a change (some left out)."""
    cells = [Text(fmt_float(change.a)), Text(fmt_float(change.b))] if with_values else []
    cells.append(_styled(ratio_text(change), change))
    if with_log:
        cells.append(Text(log10_text(change)))
    return cells


def _styled(text: str, change: Change) -> Text:
    """Bold when the change is by an order of magnitude or more (visible with colour)."""
    return Text(text, style="bold" if change.magnitude >= 1 else "")


def _note(parts: Sequence[tuple[str, Change]], extra: str | None) -> str | None:
    """The reasons of a row's missing ratios, in words (``‖g‖: 0 in A: ...``)."""
    words = [f"{name}: {REASONS[c.reason]}" for name, c in parts if c.reason is not None]
    if extra is not None:
        words.append(extra)
    return "; ".join(words) or None


# --- header -----------------------------------------------------------------------------


def side_line(side: ReportSide) -> str:
    """``file — model (path), batch ..., loss source, mode`` for one of the reports."""
    model = side.model if side.model_path is None else f"{side.model} ({side.model_path})"
    if side.batch_source == "synthetic":
        batch = "synthetic" if side.batch_seed is None else f"synthetic (seed {side.batch_seed})"
    else:
        batch = f"file {side.batch_path}"
    size = "" if side.batch_size is None else f", {side.batch_size:,} rows"
    mode = "training" if side.training else "inference"
    prefix = "" if side.file is None else f"{side.file} — "
    return f"{prefix}{model}; batch {batch}{size}; loss {side.loss_source}; {mode}"


def _norm_line(change: Change) -> str:
    """``a → b (×ratio)`` for the global gradient norm, or the reason there is no ratio."""
    factor = ratio_text(change)
    why = f"×{factor}" if factor != MISSING else REASONS.get(change.reason or "", MISSING)
    return f"{fmt_float(change.a)} → {fmt_float(change.b)} ({why})"


def _loss_line(report: DiffReport) -> str:
    loss = report.loss
    a = MISSING if loss.a is None else fmt_general(loss.a)
    b = MISSING if loss.b is None else fmt_general(loss.b)
    if loss.delta is None:
        reason = "" if loss.reason is None else f" ({REASONS.get(loss.reason, loss.reason)})"
        return f"{a} → {b}{reason}"
    return f"{a} → {b} (Δ {loss.delta:+.6g})"


def _count_line(count: int, what: str) -> str:
    return "none" if count == 0 else f"{count} {what}"


def _check_text(result: CheckResult, max_ratio: float) -> str:
    name = f"ratio (×{max_ratio:g})" if result.condition == "ratio" else result.condition
    if not result.triggered:
        return f"{name} ok"
    shown = ", ".join(result.paths[:3])
    more = "" if len(result.paths) <= 3 else f" (+{len(result.paths) - 3} more)"
    return f"{name} FAILED: {shown}{more}"


def checks_line(report: DiffReport) -> str:
    """The requested ``--fail-on`` conditions and whether each fired (and on what)."""
    checks = report.checks
    requested = [r for r in checks.results if r.requested]
    if not requested:
        return "none (--fail-on)"
    return "; ".join(_check_text(r, checks.max_ratio) for r in requested)


def header(report: DiffReport) -> Table:
    """The summary block: the two reports, what differs, global changes, checks."""
    new, recovered = len(report.nonfinite_new), len(report.nonfinite_recovered)
    lines = [
        ("A", side_line(report.a)),
        ("B", side_line(report.b)),
        *(("note", note) for note in report.notes),
        ("global ‖g‖", _norm_line(report.global_grad_norm)),
        ("loss", _loss_line(report)),
        ("added", _count_line(len(report.added), "only in B")),
        ("removed", _count_line(len(report.removed), "only in A")),
        ("non-finite", f"{new} newly non-finite in B, {recovered} recovered"),
        ("checks", checks_line(report)),
    ]
    return summary_grid(lines)


# --- tables -----------------------------------------------------------------------------


def top_table(report: DiffReport) -> Table:
    """The largest changes by ``|log10 B/A|``, across variables and layer outputs."""
    rows = [
        [
            Text(row.kind),
            Text(row.path),
            Text(QUANTITY_NAMES.get(row.quantity, row.quantity)),
            *_change_cells(row.change),
        ]
        for row in report.top
    ]
    notes = [None if r.change.reason is None else REASONS[r.change.reason] for r in report.top]
    return make_table("Largest changes (|log10 B/A|)", TOP_COLUMNS, rows, notes)


def variables_table(report: DiffReport) -> Table:
    """Per variable in both reports: ‖g‖, ‖g‖/‖w‖ and ‖w‖, in A, in B and their ratio."""
    rows, notes = [], []
    for v in report.variables:
        rows.append(
            [
                Text(v.path),
                *_change_cells(v.grad_l2),
                *_change_cells(v.grad_weight_ratio, with_log=False),
                *_change_cells(v.weight_l2, with_values=False, with_log=False),
            ]
        )
        parts = [("‖g‖", v.grad_l2), ("‖g‖/‖w‖", v.grad_weight_ratio), ("‖w‖", v.weight_l2)]
        notes.append(_note(parts, v.note))
    return make_table("Gradients by variable", VARIABLE_COLUMNS, rows, notes)


def activations_table(report: DiffReport) -> Table:
    """Per layer output in both reports: ‖g‖ and the activation norm ‖a‖, A vs B."""
    rows, notes = [], []
    for act in report.activations:
        rows.append(
            [
                Text(act.path),
                Text(act.layer_class),
                *_change_cells(act.grad_l2),
                *_change_cells(act.value_l2, with_log=False),
            ]
        )
        notes.append(_note([("‖g‖", act.grad_l2), ("‖a‖", act.value_l2)], act.note))
    return make_table("Gradients by layer output", ACTIVATION_COLUMNS, rows, notes)


def presence_table(report: DiffReport) -> Table:
    """Tensors in only one of the reports."""
    rows = [[Text(p.kind), Text(p.path), Text("added (only in B)")] for p in report.added]
    rows += [[Text(p.kind), Text(p.path), Text("removed (only in A)")] for p in report.removed]
    return make_table("Added and removed", PRESENCE_COLUMNS, rows, [None] * len(rows))


def nonfinite_table(report: DiffReport) -> Table:
    """Tensors that became non-finite in B, or stopped being."""
    labelled = [(c, "newly non-finite") for c in report.nonfinite_new]
    labelled += [(c, "recovered") for c in report.nonfinite_recovered]
    rows = [
        [
            Text(c.kind),
            Text(c.path),
            Text(c.quantity),
            Text(MISSING if c.a is None else str(c.a)),
            Text(MISSING if c.b is None else str(c.b)),
            Text(label, style="bold red" if label == "newly non-finite" else ""),
        ]
        for c, label in labelled
    ]
    return make_table("Non-finite changes", NONFINITE_COLUMNS, rows, [None] * len(rows))


def renderables(report: DiffReport) -> list[RenderableType]:
    """Header, then each non-empty table, separated by blank lines."""
    tables: list[Table] = []
    if report.top:
        tables.append(top_table(report))
    if report.variables:
        tables.append(variables_table(report))
    if report.activations:
        tables.append(activations_table(report))
    if report.added or report.removed:
        tables.append(presence_table(report))
    if report.nonfinite_new or report.nonfinite_recovered:
        tables.append(nonfinite_table(report))
    parts: list[RenderableType] = [header(report)]
    for table in tables:
        parts.extend([Text(""), table])
    return parts


def format_table(report: DiffReport, *, width: int | None = None, color: bool = False) -> str:
    """The diff as text: a summary, then the tables (empty ones left out)."""
    buffer = io.StringIO()
    make_console(buffer, width, color).print(Group(*renderables(report)))
    return strip_trailing_spaces(buffer.getvalue())


def format_json(report: DiffReport) -> str:
    """The diff as indented JSON (schema ``gradscope.diff/1``) ending in a newline."""
    return report.to_json() + "\n"


# --- CSV --------------------------------------------------------------------------------

CSV_COLUMNS: tuple[str, ...] = (
    "kind",
    "path",
    "quantity",
    "a",
    "b",
    "ratio",
    "log10_ratio",
    "reason",
    "status",
)
"""Long format, one row per compared number: ``kind`` is ``model`` (``global_grad_norm``
and ``loss``; the loss row's ``ratio`` is empty), ``variable`` (``grad_l2``,
``weight_l2``, ``grad_weight_ratio``), ``activation`` (``grad_l2``, ``value_l2``) or
``input``.  ``status`` is ``added``/``removed`` for a tensor in one report only, and
``nonfinite_new``/``nonfinite_recovered`` for a non-finite transition (``quantity``
``grad_nonfinite`` or ``value_nonfinite``, ``a``/``b`` the counts)."""


def _change_row(kind: str, path: str, quantity: str, change: Change) -> dict[str, str]:
    return {
        "kind": kind,
        "path": path,
        "quantity": quantity,
        "a": format_float(change.a),
        "b": format_float(change.b),
        "ratio": format_float(change.ratio),
        "log10_ratio": format_float(change.log10_ratio),
        "reason": change.reason or "",
    }


def _nonfinite_row(c: NonfiniteChange, status: str) -> dict[str, str]:
    """A non-finite transition: the two counts of NaN/Inf entries."""
    return {
        "kind": c.kind,
        "path": c.path,
        "quantity": f"{c.quantity}_nonfinite",
        "a": "" if c.a is None else str(c.a),
        "b": "" if c.b is None else str(c.b),
        "status": status,
    }


def _csv_rows(report: DiffReport) -> list[dict[str, str]]:
    loss = report.loss
    rows = [
        _change_row("model", "", "global_grad_norm", report.global_grad_norm),
        {
            "kind": "model",
            "quantity": "loss",
            "a": format_float(loss.a),
            "b": format_float(loss.b),
            "reason": loss.reason or "",
        },
    ]
    for v in report.variables:
        rows.append(_change_row("variable", v.path, "grad_l2", v.grad_l2))
        rows.append(_change_row("variable", v.path, "weight_l2", v.weight_l2))
        rows.append(_change_row("variable", v.path, "grad_weight_ratio", v.grad_weight_ratio))
    for act in report.activations:
        rows.append(_change_row("activation", act.path, "grad_l2", act.grad_l2))
        rows.append(_change_row("activation", act.path, "value_l2", act.value_l2))
    rows += [{"kind": p.kind, "path": p.path, "status": "added"} for p in report.added]
    rows += [{"kind": p.kind, "path": p.path, "status": "removed"} for p in report.removed]
    for status, changes in (
        ("nonfinite_new", report.nonfinite_new),
        ("nonfinite_recovered", report.nonfinite_recovered),
    ):
        rows += [_nonfinite_row(c, status) for c in changes]
    return rows


def format_csv(report: DiffReport) -> str:
    """The diff as CSV (see :data:`CSV_COLUMNS`); empty cells are missing values."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(_csv_rows(report))
    return buffer.getvalue()


def render(report: DiffReport, fmt: OutputFormat, *, width: int | None, color: bool) -> str:
    """``report`` as a table, JSON or CSV (see :func:`gradscope.render.render`)."""
    return by_format(
        fmt,
        table=lambda: format_table(report, width=width, color=color),
        json=lambda: format_json(report),
        csv=lambda: format_csv(report),
    )
