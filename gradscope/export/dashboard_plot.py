"""``dashboard --plot FILE.png``: a monitored run, one panel per instrument, over steps.

Panels, top to bottom, each only when the run has its values: (1) the loss (``logs`` and
the probe loss), (2) the global gradient norm and the per-layer norms (the ``top``
movers when there are more layers; log scale), (3) the update ratios ``‖Δw‖/‖w‖`` (log),
(4) the sharpness ``λmax`` against ``2/lr`` (log), (5) the batch tests with the line
``y = 1`` (log).  Every health event is a vertical line at its step on every panel.

Drawn like the other plots (:mod:`gradscope.export.plot`: matplotlib's Agg canvas only,
imported on first use, the file written atomically).  NaN points (``null`` in the file)
are left out of the lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._atomic import check_writable
from ..commands.dashboard.report import DashboardReport
from ..commands.dashboard.summary import Series
from .plot import (
    DPI,
    GRAD_COLOR,
    OPTION,
    SUFFIXES,
    TOP_COLOR,
    PlotResult,
    _matplotlib,
    _save,
    _short,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PANEL_HEIGHT = 2.4
EVENT_COLORS = ("#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
LOSS_KEYS = ("logs.loss", "logs.val_loss", "report.loss")
TEST_KEYS = (
    "batch_tests.norm_test",
    "batch_tests.inner_product_test",
    "batch_tests.orthogonality_test",
)


def _line(ax: Axes, series: Series, **style: Any) -> None:
    """``series`` without its NaN points (a log axis drops non-positive ones itself)."""
    points = [(s, v) for s, v in zip(series.steps, series.values, strict=True) if math.isfinite(v)]
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="." if len(points) < 50 else None, markersize=3, **style)


def _series(report: DashboardReport, keys: Sequence[str]) -> list[Series]:
    found = (report.get(key) for key in keys)
    return [s for s in found if s is not None and s.finite()]


LOG_LOSS_SPAN = 100.0
"""A positive loss that spans more than this factor is drawn on a log axis (a blow-up
would flatten everything else on a linear one)."""


def _loss_panel(ax: Axes, report: DashboardReport) -> None:
    shown = _series(report, LOSS_KEYS)
    for series in shown:
        _line(ax, series, label=series.label, linewidth=1.2)
    values = [v for series in shown for v in series.values if math.isfinite(v)]
    if values and min(values) > 0 and max(values) > LOG_LOSS_SPAN * min(values):
        ax.set_yscale("log")
    ax.set_ylabel("loss")


def _layers(ax: Axes, shown: Sequence[Series], total: int) -> None:
    for series in shown:
        _line(ax, series, label=_short(series.key), linewidth=0.8, alpha=0.8)
    if len(shown) < total:
        ax.set_title(f"top {len(shown)} of {total} layers by |log10 last/first|", fontsize=8)


def _layers_panel(
    ax: Axes, total: list[Series], label: str, layers: tuple[Series, ...], shown: tuple[Series, ...]
) -> None:
    """The all-variables series in black, then the ``shown`` layers; log scale."""
    for series in total:
        _line(ax, series, label=label, color="black", linewidth=1.8)
    _layers(ax, shown, len(layers))
    ax.set_yscale("log")


def _grad_panel(ax: Axes, report: DashboardReport) -> None:
    total = _series(report, ("report.global_grad_norm",))
    _layers_panel(ax, total, "global ‖g‖", report.grad_norms, report.top_grad_norms())
    ax.set_ylabel("‖g‖")


def _update_panel(ax: Axes, report: DashboardReport) -> None:
    total = _series(report, ("update.ratio",))
    _layers_panel(ax, total, "all variables", report.update_ratios, report.top_update_ratios())
    ax.set_ylabel("‖Δw‖/‖w‖")


def _sharpness_panel(ax: Axes, report: DashboardReport) -> None:
    for series, color in zip(
        _series(report, ("sharpness.lambda_max", "sharpness.two_over_lr")),
        (GRAD_COLOR, TOP_COLOR),
        strict=False,
    ):
        _line(ax, series, label=series.label, color=color, linewidth=1.4)
    ax.set_yscale("log")
    ax.set_ylabel("sharpness")


def _tests_panel(ax: Axes, report: DashboardReport) -> None:
    for series in _series(report, TEST_KEYS):
        _line(ax, series, label=series.label, linewidth=1.2)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8, label="y = 1")
    ax.set_yscale("log")
    ax.set_ylabel("batch tests")


Panel = tuple[str, Callable[["Axes", DashboardReport], None]]


def panels(report: DashboardReport) -> tuple[Panel, ...]:
    """The panels this run has values for, top to bottom."""
    wanted: list[tuple[bool, Panel]] = [
        (bool(_series(report, LOSS_KEYS)), ("loss", _loss_panel)),
        (
            bool(report.grad_norms or _series(report, ("report.global_grad_norm",))),
            ("gradient norm", _grad_panel),
        ),
        (
            bool(report.update_ratios or _series(report, ("update.ratio",))),
            ("update ratio", _update_panel),
        ),
        (bool(_series(report, ("sharpness.lambda_max",))), ("sharpness", _sharpness_panel)),
        (bool(_series(report, TEST_KEYS)), ("batch tests", _tests_panel)),
    ]
    return tuple(panel for present, panel in wanted if present)


def _events(ax: Axes, report: DashboardReport, legend: bool) -> None:
    """A vertical line at each step where a diagnosis fired, one colour per kind."""
    kinds = list(dict.fromkeys(event.kind for event in report.events))
    for k, kind in enumerate(kinds):
        color = EVENT_COLORS[k % len(EVENT_COLORS)]
        steps = sorted({event.step for event in report.events if event.kind == kind})
        for i, step in enumerate(steps):
            label = kind if legend and i == 0 else None
            ax.axvline(step, color=color, linestyle=":", linewidth=0.9, alpha=0.7, label=label)


def _title(report: DashboardReport) -> str:
    run = report.run
    return f"{run.file}: {run.records} records, steps {run.first_step}..{run.last_step}"


def dashboard_figure(
    report: DashboardReport, figure_class: Any = None
) -> tuple[Figure, tuple[str, ...]]:
    """The figure of ``report`` and the names of its panels, top to bottom."""
    if figure_class is None:
        figure_class, _ = _matplotlib()
    chosen = panels(report)
    figure = figure_class(
        figsize=(9.0, 1.0 + PANEL_HEIGHT * max(len(chosen), 1)), dpi=DPI, layout="constrained"
    )
    axes = figure.subplots(max(len(chosen), 1), 1, sharex=True, squeeze=False)[:, 0]
    for i, ((_, draw), ax) in enumerate(zip(chosen, axes, strict=False)):
        draw(ax, report)
        _events(ax, report, legend=i == 0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    axes[-1].set_xlabel("step (optimizer iterations)")
    figure.suptitle(_title(report), fontsize=10)
    return figure, tuple(name for name, _ in chosen)


def plot_dashboard(report: DashboardReport, path: str | Path, *, force: bool = False) -> PlotResult:
    """Draw ``report`` to ``path`` (one panel per instrument present); ``plotted`` lists
    the panels.  An existing file is overwritten only with ``force``."""
    figure_class, canvas_class = _matplotlib()
    target = Path(path)
    check_writable(target, SUFFIXES, OPTION, force=force)
    figure, names = dashboard_figure(report, figure_class)
    _save(figure, canvas_class, target)
    return PlotResult(target, names)


__all__ = ["dashboard_figure", "panels", "plot_dashboard"]
