"""The ``dashboard`` command's entry points: a JSON Lines file in, a report out."""

from __future__ import annotations

from pathlib import Path

from .options import DashboardOptions
from .reader import INSTRUMENTS, MonitorRun, read_run
from .report import DashboardReport, RunInfo
from .summary import health_events, layer_grad_norms, layer_update_ratios, run_series


def _instruments(run: MonitorRun) -> tuple[str, ...]:
    asked = {name for record in run.records for name in record.instruments}
    return tuple(name for name in INSTRUMENTS if name in asked)


def _info(run: MonitorRun) -> RunInfo:
    steps = [record.fit.step for record in run.records]
    epochs = {record.fit.epoch for record in run.records}
    return RunInfo(
        run.path, len(run.records), min(steps), max(steps), len(epochs), _instruments(run)
    )


def dashboard_run(run: MonitorRun, options: DashboardOptions | None = None) -> DashboardReport:
    """The series, per-layer series and health events of the records of ``run``."""
    options = options or DashboardOptions()
    return DashboardReport(
        run=_info(run),
        series=run_series(run),
        grad_norms=layer_grad_norms(run),
        update_ratios=layer_update_ratios(run),
        events=health_events(run),
        top=options.top,
        notes=run.notes,
    )


def dashboard(
    path: str | Path, options: DashboardOptions | None = None, *, top: int | None = None
) -> DashboardReport:
    """Read the ``gradscope.monitor/1`` JSON Lines file ``path`` (what
    ``GradientMonitor(jsonl=...)`` writes) and extract its series.

    ``top`` is a shortcut for ``DashboardOptions(top=...)`` (not both).  Bad data raises
    :class:`~gradscope.errors.DataLoadError` naming the file and line; a cut-off last line
    is skipped and noted in ``report.notes``.  No TensorFlow is imported.
    """
    if top is not None:
        if options is not None:
            from ...errors import UsageError

            raise UsageError(
                "top: given twice; give it once, as top= or as DashboardOptions(top=...). "
                f"Received: top={top!r}, options={options!r}"
            )
        options = DashboardOptions(top=top)
    return dashboard_run(read_run(path), options)


__all__ = ["dashboard", "dashboard_run"]
