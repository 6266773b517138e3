"""``--plot FILE.png``: pictures of a report, for a quick look (optional extra ``plot``).

* :func:`plot_inspect` draws an inspect :class:`~gradscope.report.Report`: the gradient
  norm of each layer (L2 over its variables, log scale, forward order), vanishing layers
  in red under a dashed threshold line, and below it the norm of each layer's output.
* :func:`plot_density` draws a hessian :class:`~gradscope.report.HessianReport`: the
  spectral density of each block that has one, with its top and smallest eigenvalues.

matplotlib is imported on first use, never with gradscope, and only through its Agg
canvas (``Figure`` + ``FigureCanvasAgg``): no window, no display needed, and the global
``pyplot`` backend of a notebook that calls these functions is left alone.  Values that a
log axis cannot show (NaN, +/-Inf, zero, no gradient) are drawn as markers on the edge of
the axis, never dropped silently.  Files are written atomically.
"""

from __future__ import annotations

import math
import re
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._atomic import atomic_path, check_writable
from ..commands.inspect.report import Report
from ..errors import OutputError, UsageError, first_line
from ..health import Thresholds, diagnose
from ..report import HessianBlock, HessianReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SUFFIXES = (".png",)
OPTION = "--plot"
DPI = 120
MAX_PANELS = 6
"""At most this many density panels; the title says how many blocks were left out."""
LABEL_CHARS = 20
"""Tick labels longer than this keep their tail (``…/dense_12``)."""
MAX_TICK_LABELS = 60
"""Above this many layers, only every k-th tick is labelled."""
LINEAR_SPAN = 20.0
"""Activation norms within this ratio of each other get a linear axis (from 0)."""
LOG_SPAN = 1e3
"""A density whose positive values span more than this ratio gets a log axis..."""
LOG_DECADES = 6.0
"""...showing this many decades below its peak."""

GRAD_COLOR = "#1f77b4"
VANISH_COLOR = "#d62728"
ACT_COLOR = "#2ca02c"
TOP_COLOR = "#d62728"
MIN_COLOR = "#9467bd"


@dataclass(frozen=True)
class PlotResult:
    """What a plot function drew, for the caller's notes and for tests.

    ``plotted``: the x-axis layers (inspect) or the blocks drawn (density), in order.
    ``marked``: the layers drawn as vanishing.  ``edge``: ``label: what`` for each value
    an axis cannot show (``nan``, ``inf``, ``zero`` on a log axis, ``no gradient``,
    ``no value``), drawn as a marker on the axis edge; for density plots, the blocks with
    non-finite eigenvalues or density.  ``omitted``: the blocks with a density left out
    (over :data:`MAX_PANELS`).
    """

    path: Path
    plotted: tuple[str, ...]
    marked: tuple[str, ...] = ()
    edge: tuple[str, ...] = ()
    omitted: tuple[str, ...] = ()


def ensure_available(option: str = OPTION) -> None:
    """Raise :class:`UsageError` when matplotlib cannot be imported (call it early);
    the message names ``option``."""
    _matplotlib(option)


def _matplotlib(option: str = OPTION) -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``, or a one-line :class:`UsageError` naming ``option``
    and the extra."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UsageError(
            f"{option} needs matplotlib, which is not installed: "
            f"pip install 'gradscope[plot]'. Received: {first_line(exc)}"
        ) from None
    return Figure, FigureCanvasAgg


def _save(figure: Figure, canvas_class: Any, target: Path) -> None:
    canvas_class(figure)
    try:
        with atomic_path(target) as temporary:
            figure.savefig(temporary, format="png", dpi=DPI)
    except OSError as exc:
        raise OutputError(f"{OPTION} {target}: cannot write the file: {exc}") from exc


def _short(label: str, most: int = LABEL_CHARS) -> str:
    """``label``, or its tail (from a ``/`` when one fits) after an ellipsis."""
    if len(label) <= most:
        return label
    for i, char in enumerate(label):
        if char == "/" and len(label) - i < most:
            return "…" + label[i:]
    return "…" + label[-(most - 1) :]


def _fmt(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def _edge_kind(value: float | None, missing: str = "no gradient") -> str | None:
    """Why a norm cannot sit on a log axis, or ``None`` when it can."""
    if value is None:
        return missing
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf"
    return "zero" if value <= 0 else None


# --------------------------------------------------------------------------- inspect


_SUFFIX = re.compile(r"(@\d+)?(:\d+)?$")


def _base(path: str) -> str:
    """An activation path without its call/output suffix: ``dense@1:0`` -> ``dense``."""
    return _SUFFIX.sub("", path)


def _layer_norms(report: Report) -> dict[str, float | None]:
    """Per layer, in forward order: the L2 over its variables' gradients.

    ``None`` when no variable of the layer has a gradient (not connected to the loss);
    NaN / Inf when one of them is non-finite.
    """
    grads: dict[str, list[float]] = {}
    for row in report.variables:
        values = grads.setdefault(row.layer, [])
        if row.grad is not None:
            values.append(float(row.grad.l2))
    norms: dict[str, float | None] = {}
    for layer, values in grads.items():
        if not values:
            norms[layer] = None
        elif any(math.isnan(v) for v in values):
            norms[layer] = math.nan
        elif any(math.isinf(v) for v in values):
            norms[layer] = math.inf
        else:
            norms[layer] = math.hypot(*values)
    return norms


def _categories(report: Report, layers: Sequence[str]) -> list[str]:
    """The x axis: layer-output paths (suffixes folded) and variable layers, forward
    order.  A layer with variables but no captured output goes after the previous one."""
    order: list[str] = []
    for row in report.activations:
        base = _base(row.path)
        if base not in order:
            order.append(base)
    previous = -1
    for layer in layers:
        if layer in order:
            previous = order.index(layer)
        else:
            previous += 1
            order.insert(previous, layer)
    return order


def _vanishing(
    report: Report, norms: dict[str, float | None]
) -> tuple[tuple[str, ...], float, float]:
    """The vanishing layers (the health finding's), the threshold ratio and the threshold
    norm (0 when no layer has a finite positive gradient norm)."""
    health = report.health if report.health is not None else diagnose(report, Thresholds())
    ratio = health.thresholds.vanishing_ratio
    finding = next((f for f in health.findings if f.kind == "vanishing"), None)
    largest_value = None if finding is None else finding.values.get("largest_grad_l2")
    if isinstance(largest_value, (int, float)) and math.isfinite(largest_value):
        largest = float(largest_value)
    else:
        finite = [v for v in norms.values() if v is not None and math.isfinite(v)]
        largest = max(finite, default=0.0)
    where = () if finding is None else tuple(w for w in finding.where if w in norms)
    return where, ratio, ratio * largest


def _edge_markers(
    ax: Axes, points: Iterable[tuple[int, str]], color: str, red: Container[int] = ()
) -> list[tuple[int, str]]:
    """Draw the values a log axis cannot show on its edge (in red at ``red`` x); return
    them."""
    drawn = list(points)
    transform = ax.get_xaxis_transform()
    styles = {
        "nan": ("X", 0.04),
        "inf": ("^", 0.96),
        "zero": ("v", 0.04),
    }
    for x, kind in drawn:
        color_x = VANISH_COLOR if x in red else color
        marker, y = styles.get(kind, ("o", 0.04))
        filled = kind in styles
        ax.plot(
            [x],
            [y],
            marker=marker,
            markersize=9,
            linestyle="none",
            transform=transform,
            color=color_x,
            markerfacecolor=color_x if filled else "none",
            clip_on=False,
            zorder=4,
        )
        ax.annotate(
            "0" if kind == "zero" else kind,
            (x, y),
            xycoords=transform,
            xytext=(0, 9 if y < 0.5 else -14),
            textcoords="offset points",
            ha="center",
            fontsize=8,
            color=color_x,
        )
    return drawn


def _norm_plot(
    ax: Axes,
    xs: Sequence[int],
    values: Sequence[float | None],
    color: str,
    *,
    log: bool = True,
    red: Container[int] = (),
    missing: str = "no gradient",
) -> list[tuple[int, str]]:
    """A line with markers through the plottable values; the rest on the edge.

    ``log=False`` picks the scale: log when the finite values span more than
    :data:`LINEAR_SPAN`, else linear from 0 (where a zero is an ordinary point).
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    positive = [v for v in finite if v > 0]
    if not log:
        log = bool(positive) and max(positive) / min(positive) > LINEAR_SPAN
    shown = [_shown(v, log) for v in values]
    if any(v is not None for v in shown):
        # the line breaks (NaN) at a value it cannot show, never bridges it
        line = sorted((x, math.nan if v is None else v) for x, v in zip(xs, shown, strict=True))
        ax.plot(
            [x for x, _ in line],
            [v for _, v in line],
            color=color,
            linewidth=1.2,
            marker="o",
            markersize=5,
            zorder=2,
        )
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, max(finite, default=1.0) * 1.15 or 1.0)
    edge = [
        (x, _edge_kind(v, missing) or "zero")
        for x, v, y in zip(xs, values, shown, strict=True)
        if y is None
    ]
    return _edge_markers(ax, edge, color, red)


def _shown(value: float | None, log: bool) -> float | None:
    """``value`` when an axis (log or linear) can show it, else ``None``."""
    if value is None or not math.isfinite(value) or (log and value <= 0):
        return None
    return value


def _inspect_figure(report: Report, figure_class: Any) -> tuple[Figure, PlotResult]:
    norms = _layer_norms(report)
    categories = _categories(report, list(norms))
    if not categories:
        raise UsageError(
            f"{OPTION}: the report has no variable and no layer-output rows to plot. "
            "Received: an empty report (check --layers)."
        )
    index = {name: i for i, name in enumerate(categories)}
    marked, ratio, threshold = _vanishing(report, norms)
    acts = [
        (index[_base(r.path)], r.path, None if r.value is None else r.value.l2)
        for r in report.activations
    ]
    panels = int(bool(norms)) + int(bool(acts))
    width = min(20.0, max(10.0, 0.32 * len(categories) + 3.0))
    figure = figure_class(figsize=(width, 3.0 + 2.6 * panels), dpi=DPI, layout="constrained")
    ratios = [3, 2] if panels == 2 else [1]
    axes = figure.subplots(
        panels, 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": ratios}
    )[:, 0]
    edge: list[str] = []
    if norms:
        edge += _gradient_panel(axes[0], norms, index, marked, (ratio, threshold), report)
    if acts:
        ax = axes[-1]
        drawn = _norm_plot(
            ax, [a[0] for a in acts], [a[2] for a in acts], ACT_COLOR, log=False, missing="no value"
        )
        labels = {x: path for x, path, _ in acts}
        edge += [f"{labels[x]} (output): {kind}" for x, kind in drawn]
        ax.set_ylabel("activation norm ‖a‖\n(layer output)")
        if not norms:
            ax.set_title(_subtitle(report), fontsize=9, loc="left")
    _x_axis(axes[-1], categories, set(marked))
    mode = "training" if report.training else "inference"
    figure.suptitle(
        f"{report.model.name}: gradient norm per layer, loss {_fmt(report.loss.value)} "
        f"({report.loss.source}), {mode}",
        fontsize=12,
        fontweight="bold",
    )
    for ax in axes:
        ax.grid(True, which="major", axis="y", alpha=0.3)
        ax.grid(True, axis="x", alpha=0.15)
    result = PlotResult(Path(), tuple(categories), marked, tuple(edge))
    return figure, result


def _subtitle(report: Report) -> str:
    batch = report.batch
    where = f"{batch.path}" if batch.source == "file" else f"synthetic (seed {batch.seed})"
    return (
        f"batch: {where}, {batch.size} rows · global ‖g‖ {_fmt(report.global_grad_norm)} · "
        f"{report.model.trainable_params:,} trainable params"
    )


def _gradient_panel(
    ax: Axes,
    norms: dict[str, float | None],
    index: dict[str, int],
    marked: Sequence[str],
    vanishing: tuple[float, float],
    report: Report,
) -> list[str]:
    from matplotlib.lines import Line2D

    xs = [index[layer] for layer in norms]
    drawn = _norm_plot(
        ax, xs, list(norms.values()), GRAD_COLOR, red={index[layer] for layer in marked}
    )
    low = [(index[layer], y) for layer in marked if (y := _shown(norms[layer], True))]
    if low:
        ax.plot(
            [x for x, _ in low],
            [v for _, v in low],
            linestyle="none",
            marker="o",
            markersize=8,
            color=VANISH_COLOR,
            zorder=3,
        )
    handles = [
        Line2D([], [], color=GRAD_COLOR, marker="o", markersize=5, label="‖g‖ of the layer"),
    ]
    handles.append(
        Line2D(
            [],
            [],
            color=VANISH_COLOR,
            marker="o",
            markersize=8,
            linestyle="none",
            label=f"vanishing ({len(marked)} layers)" if marked else "vanishing: none",
        )
    )
    ratio, threshold = vanishing
    if threshold > 0:
        ax.axhline(threshold, color=VANISH_COLOR, linestyle="--", linewidth=1, zorder=1)
        handles.append(
            Line2D(
                [],
                [],
                color=VANISH_COLOR,
                linestyle="--",
                linewidth=1,
                label=f"vanishing threshold: {ratio:g} × largest = {threshold:.2e}",
            )
        )
        # keep the threshold in view even when every layer is far above it
        bottom, top = ax.get_ylim()
        ax.set_ylim(min(bottom, threshold / 3), top)
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.85)
    ax.set_ylabel("gradient norm ‖g‖\n(L2 over the layer's variables)")
    ax.set_title(_subtitle(report), fontsize=9, loc="left")
    labels = {index[layer]: layer for layer in norms}
    return [f"{labels[x]}: {kind}" for x, kind in drawn]


def _x_axis(ax: Axes, categories: Sequence[str], marked: set[str]) -> None:
    n = len(categories)
    step = max(1, math.ceil(n / MAX_TICK_LABELS))
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks)
    long = n > 8 or any(len(c) > 10 for c in categories)
    ax.set_xticklabels(
        [_short(categories[i]) for i in ticks],
        rotation=45 if long else 0,
        ha="right" if long else "center",
        fontsize=8,
    )
    for tick, i in zip(ax.get_xticklabels(), ticks, strict=True):
        if categories[i] in marked:
            tick.set_color(VANISH_COLOR)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("layer, in forward order" + (f" (one in {step} labelled)" if step > 1 else ""))


def plot_inspect(report: Report, path: str | Path, *, force: bool = False) -> PlotResult:
    """Draw ``report``'s per-layer gradient and activation norms to the PNG ``path``.

    Top panel: the gradient norm of each layer (the L2 over its variables), log scale,
    layers in forward order; the layers of the health check's ``vanishing`` finding
    (recomputed with the default thresholds when the report has no health section) in
    red, under a dashed line at the threshold.  Bottom panel: ``‖a‖`` of each layer
    output.  An existing file is overwritten only with ``force``.
    """
    figure_class, canvas_class = _matplotlib()
    target = Path(path)
    check_writable(target, SUFFIXES, OPTION, force=force)
    figure, result = _inspect_figure(report, figure_class)
    _save(figure, canvas_class, target)
    return PlotResult(target, result.plotted, result.marked, result.edge)


# --------------------------------------------------------------------------- density


def block_label(block: HessianBlock) -> str:
    """A short name for a block: its variable, its layer, or how many layers it spans."""
    if len(block.vars) == 1:
        return block.vars[0]
    if len(block.layers) <= 3:
        return " + ".join(block.layers) or f"{len(block.vars)} variables"
    return f"{len(block.layers)} layers ({block.layers[0]} … {block.layers[-1]})"


def _finite_pairs(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    pairs = [
        (float(x), float(y))
        for x, y in zip(xs, ys, strict=False)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    return [x for x, _ in pairs], [y for _, y in pairs]


def _density_panel(ax: Axes, block: HessianBlock) -> list[str]:
    from matplotlib.ticker import MaxNLocator

    if block.density is None:  # the caller keeps only blocks with a density
        raise RuntimeError(f"block {', '.join(block.vars)} has no spectral density")
    grid, values = _finite_pairs(block.density.grid, block.density.values)
    edge: list[str] = []
    if grid:
        ax.plot(grid, values, color=GRAD_COLOR, linewidth=1.2)
        positive = [v for v in values if v > 0]
        peak = max(values)
        if positive and peak / min(positive) > LOG_SPAN:
            ax.set_yscale("log")
            floor = max(min(positive), peak * 10**-LOG_DECADES)
            ax.fill_between(
                grid,
                [max(v, floor) for v in values],
                floor,
                color=GRAD_COLOR,
                alpha=0.15,
                linewidth=0,
            )
            ax.set_ylim(floor, peak * 3)
        else:
            ax.fill_between(grid, values, 0, color=GRAD_COLOR, alpha=0.15, linewidth=0)
            ax.set_ylim(0, peak * 1.1 if peak > 0 else 1)
    else:
        edge.append(f"{block_label(block)}: no finite density values")
        ax.text(0.5, 0.5, "no finite density values", transform=ax.transAxes, ha="center")
    tops = [e for e in block.eigenvalues if math.isfinite(e)]
    for value in tops:
        ax.axvline(value, color=TOP_COLOR, linestyle="--", linewidth=1)
    low = block.min_eigenvalue
    if math.isfinite(low):
        ax.axvline(low, color=MIN_COLOR, linestyle=":", linewidth=1.5)
    if len(tops) < len(block.eigenvalues) or not math.isfinite(low):
        edge.append(f"{block_label(block)}: non-finite eigenvalues")
    shown = [*grid, *tops, *([low] if math.isfinite(low) else [])]
    if shown:
        span = (max(shown) - min(shown)) or 1.0
        ax.set_xlim(min(shown) - 0.03 * span, max(shown) + 0.03 * span)
    top = block.eigenvalues[0] if block.eigenvalues else None
    facts = [f"λmax {'—' if top is None else _fmt(top)}", f"λmin {_fmt(low)}"]
    facts.append(f"n={block.size:,}")
    facts.append(block.method + ("" if block.iterations is None else f" ({block.iterations} it.)"))
    ax.set_title(f"{_short(block_label(block), 40)}\n{'  ·  '.join(facts)}", fontsize=9, loc="left")
    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.grid(True, alpha=0.3)
    return edge


def _density_legend(figure: Figure) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=GRAD_COLOR, linewidth=1.2, label="spectral density (SLQ)"),
        Line2D([], [], color=TOP_COLOR, linestyle="--", linewidth=1, label="top eigenvalues"),
        Line2D([], [], color=MIN_COLOR, linestyle=":", linewidth=1.5, label="min eigenvalue"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=9, frameon=False)


def _density_figure(report: HessianReport, figure_class: Any) -> tuple[Figure, PlotResult]:
    blocks = [b for b in report.blocks if b.density is not None]
    if not blocks:
        raise UsageError(
            f"{OPTION}: no block of the report has a spectral density; expected a report "
            f"computed with density=True (--density). Received: {len(report.blocks)} blocks "
            "without one."
        )
    shown, omitted = blocks[:MAX_PANELS], blocks[MAX_PANELS:]
    columns = 1 if len(shown) == 1 else 2 if len(shown) <= 4 else 3
    rows = math.ceil(len(shown) / columns)
    figure = figure_class(
        figsize=(10.0 if columns < 3 else 13.0, 1.2 + 3.2 * rows), dpi=DPI, layout="constrained"
    )
    axes = figure.subplots(rows, columns, squeeze=False)
    edge: list[str] = []
    for i, ax in enumerate(axes.flat):
        if i >= len(shown):
            ax.set_visible(False)
            continue
        edge += _density_panel(ax, shown[i])
        if i % columns == 0:
            ax.set_ylabel("density")
        if i >= len(shown) - columns:
            ax.set_xlabel("eigenvalue λ")
    count = (
        f"{len(blocks)} block{'s' if len(blocks) > 1 else ''}"
        if not omitted
        else f"first {len(shown)} of {len(blocks)} blocks shown"
    )
    figure.suptitle(
        f"{report.model.name}: {_matrix_name(report)} spectral density ({count})\n"
        f"loss {_fmt(report.loss.value)} ({report.loss.source}), batch of {report.batch.size} rows",
        fontsize=12,
    )
    _density_legend(figure)
    result = PlotResult(
        Path(),
        tuple(block_label(b) for b in shown),
        (),
        tuple(edge),
        tuple(block_label(b) for b in omitted),
    )
    return figure, result


def _matrix_name(report: HessianReport) -> str:
    """The curvature matrix as the title names it."""
    from ..commands.hessian.render import MATRIX_NAMES

    name = MATRIX_NAMES.get(report.matrix, report.matrix)
    return name[0].upper() + name[1:]


def plot_density(report: HessianReport, path: str | Path, *, force: bool = False) -> PlotResult:
    """Draw the spectral density of each block of ``report`` that has one to ``path``.

    One panel per block (at most :data:`MAX_PANELS`, the title says when more were left
    out), log density when it spans orders of magnitude, the top eigenvalues as dashed
    lines and the smallest as a dotted one.  An existing file is overwritten only with
    ``force``.
    """
    figure_class, canvas_class = _matplotlib()
    target = Path(path)
    check_writable(target, SUFFIXES, OPTION, force=force)
    figure, result = _density_figure(report, figure_class)
    _save(figure, canvas_class, target)
    return PlotResult(target, result.plotted, (), result.edge, result.omitted)


__all__ = ["PlotResult", "ensure_available", "plot_density", "plot_inspect"]
