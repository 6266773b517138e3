"""``gradscope dashboard``: the JSON Lines of ``GradientMonitor`` as a run summary (no
TensorFlow)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..commands.dashboard.options import DEFAULT_TOP
from ..render import OutputFormat
from .app import _check_output_targets, _emit, _note, _table_width, _use_color, app, run_guarded
from .options import DebugOpt, ForceOpt, FormatOpt, PlotOpt, QuietOpt


@app.command()
def dashboard(
    run: Annotated[
        Path,
        typer.Argument(
            metavar="RUN.jsonl",
            help="The JSON Lines that GradientMonitor(jsonl=...) writes (gradscope.monitor/1).",
        ),
    ],
    top: Annotated[
        int,
        typer.Option(
            "--top",
            help="With more layers: show (and plot) the K whose gradient norm or update "
            "ratio moved most.",
        ),
    ] = DEFAULT_TOP,
    plot: PlotOpt = None,
    output_format: FormatOpt = OutputFormat.TABLE,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Summarize a monitored training run: series, top-moving layers, health events."""

    def action() -> str:
        from ..commands.dashboard import DashboardOptions, dashboard_run, read_run
        from ..render import render

        options = DashboardOptions(top=top)
        _check_output_targets(None, (), plot, None, force)
        report = dashboard_run(read_run(run), options)
        for note in report.notes:
            _note(note, quiet)
        if plot is not None:
            from ..export.dashboard_plot import plot_dashboard

            plot_dashboard(report, plot, force=force)
            _note(f"wrote the plot to {plot}", quiet)
        return render(report, output_format, width=_table_width(), color=_use_color())

    _emit(run_guarded(action, debug))
