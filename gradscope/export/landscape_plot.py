"""``landscape --plot FILE.png``: the loss curve (one axis) or its contours (two axes).

Drawn like the other plots (:mod:`gradscope.export.plot`: matplotlib's Agg canvas only,
imported on first use, the file written atomically).  A curve marks its minimum, and for
an interpolation the two models (alpha = 0 and 1); contours mark the minimum with a
star and the origin (MODEL) with a cross.  Non-finite losses are left out of the curve
and the contours, and listed in the result's ``edge``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._atomic import check_writable
from ..commands.landscape.report import LandscapeReport
from .plot import (
    DPI,
    GRAD_COLOR,
    MIN_COLOR,
    OPTION,
    SUFFIXES,
    TOP_COLOR,
    PlotResult,
    _fmt,
    _matplotlib,
    _save,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CONTOUR_LEVELS = 30


def _title(report: LandscapeReport) -> str:
    d = report.directions
    if d.kind == "interpolation":
        what = f"interpolation to {d.to}"
    else:
        what = f"{d.kind} directions ({d.normalization}-normalized, seed {d.seed})"
    stats = f"BN statistics: {d.statistics}"
    return (
        f"{report.model.name}: loss landscape, {what}\n"
        f"{report.loss.source}, {report.batch.size} rows, {stats}"
    )


def _curve(ax: Axes, report: LandscapeReport) -> list[str]:
    axis = report.axes[0]
    xs = np.asarray(axis.values)
    ys = np.asarray(report.losses, dtype=np.float64)
    finite = np.isfinite(ys)
    ax.plot(xs[finite], ys[finite], color=GRAD_COLOR, linewidth=1.5, marker=".", markersize=4)
    if axis.name == "alpha":
        ends = [(0.0, report.loss.value, "MODEL"), (1.0, report.other_loss, "OTHER")]
        for x, y, label in ends:
            if y is not None and math.isfinite(y):
                ax.plot([x], [y], "o", color=MIN_COLOR, markersize=7)
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=9)
    found = report.minimum()
    if found is not None:
        ax.plot([found[0][0]], [found[1]], "*", color=TOP_COLOR, markersize=12, label="minimum")
        ax.legend(loc="best", fontsize=9, frameon=False)
    ax.set_xlabel(axis.name)
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    return [f"{axis.name}={x:g}: {y}" for x, y in zip(xs[~finite], ys[~finite], strict=True)]


def _contours(ax: Axes, figure: Figure, report: LandscapeReport) -> list[str]:
    x_axis, y_axis = report.axes
    grid = report.loss_grid()
    masked = np.ma.masked_invalid(grid)
    xs, ys = np.meshgrid(np.asarray(x_axis.values), np.asarray(y_axis.values), indexing="ij")
    filled = ax.contourf(xs, ys, masked, levels=CONTOUR_LEVELS, cmap="viridis")
    ax.contour(xs, ys, masked, levels=CONTOUR_LEVELS, colors="white", linewidths=0.3, alpha=0.5)
    figure.colorbar(filled, ax=ax, label="loss")
    ax.plot([0.0], [0.0], "x", color="white", markersize=8, label="MODEL")
    found = report.minimum()
    if found is not None:
        (mx, my), low = found
        ax.plot([mx], [my], "*", color=TOP_COLOR, markersize=14, label=f"minimum {_fmt(low)}")
    ax.legend(loc="upper right", fontsize=9)
    ax.set_xlabel(x_axis.name)
    ax.set_ylabel(y_axis.name)
    ax.set_aspect("equal", adjustable="box")
    bad = np.argwhere(~np.isfinite(grid))
    return [f"x={x_axis.values[i]:g}, y={y_axis.values[j]:g}: {grid[i, j]}" for i, j in bad]


def _figure(report: LandscapeReport, figure_class: Any) -> tuple[Figure, list[str]]:
    two = len(report.axes) == 2
    figure = figure_class(figsize=(7.0, 6.0) if two else (8.0, 4.8), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    edge = _contours(ax, figure, report) if two else _curve(ax, report)
    figure.suptitle(_title(report), fontsize=11)
    return figure, edge


def plot_landscape(report: LandscapeReport, path: str | Path, *, force: bool = False) -> PlotResult:
    """Draw ``report`` to ``path``: a curve for one axis, filled contours for two.

    An existing file is overwritten only with ``force``.
    """
    figure_class, canvas_class = _matplotlib()
    target = Path(path)
    check_writable(target, SUFFIXES, OPTION, force=force)
    figure, edge = _figure(report, figure_class)
    _save(figure, canvas_class, target)
    plotted = tuple(axis.name for axis in report.axes)
    return PlotResult(target, plotted, (), tuple(edge))


__all__ = ["plot_landscape"]
