"""``gradscope diff``: compare two saved ``inspect`` reports (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ExitCode
from ..render import OutputFormat
from .app import (
    _emit,
    _note,
    _table_width,
    _use_color,
    app,
    run_guarded,
)
from .options import (
    DebugOpt,
    FormatOpt,
    QuietOpt,
)


@app.command()
def diff(
    report_a: Annotated[
        Path,
        typer.Argument(metavar="A.json", help="Baseline: a 'gradscope inspect -f json' report."),
    ],
    report_b: Annotated[
        Path, typer.Argument(metavar="B.json", help="The inspect JSON report to compare with A.")
    ],
    top: Annotated[
        int, typer.Option("--top", help="List the N largest changes (by |log10 B/A|).")
    ] = 10,
    fail_on: Annotated[
        str | None,
        typer.Option(
            "--fail-on",
            help="Exit 1 when one of these fires: nonfinite,ratio,added,removed "
            "(the report is still printed).",
        ),
    ] = None,
    max_ratio: Annotated[
        float,
        typer.Option(
            "--max-ratio", help="ratio: a variable's ‖g‖ changed by more than this factor."
        ),
    ] = 10.0,
    output_format: FormatOpt = OutputFormat.TABLE,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare two saved inspect JSON reports (two checkpoints, before/after a change)."""
    fired: list[str] = []

    def action() -> str:
        from ..commands.diff import diff_files, parse_fail_on
        from ..render import render

        wanted = parse_fail_on(fail_on)
        report = diff_files(report_a, report_b, top=top, max_ratio=max_ratio, fail_on=wanted)
        if output_format is not OutputFormat.TABLE:  # the table shows them in its header
            for note in report.notes:
                _note(note, quiet)
        fired.extend(r.condition for r in report.checks.results if r.requested and r.triggered)
        return render(report, output_format, width=_table_width(), color=_use_color())

    _emit(run_guarded(action, debug))
    if fired:
        _note(f"--fail-on: {', '.join(fired)} fired", quiet)
        raise typer.Exit(int(ExitCode.CHECK_FAILED))
