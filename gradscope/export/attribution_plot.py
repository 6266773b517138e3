"""``attribute --plot FILE.png``: the attributions of the first examples, as pictures.

One row per example (at most ``max_examples``; the title says how many were left out),
titled with the example's index, target and score; one column group per attributed
input.  Each input is drawn by its kind (:class:`~gradscope.commands.attribute.report.
AttributedInput`):

* ``image``: the input (scaled to [0, 1] per example; grey for one channel) and, beside
  it, the attribution over a faded grey copy of it.
* ``feature_map`` (Grad-CAM): the image the map was computed from and, beside it, the
  map resized to it over a faded grey copy (jet); with no image input (a Conv1D text
  model), the map alone, a 1-D map as a strip.
* ``tokens``: each real token in a box coloured by its attribution, wrapped onto
  lines of :data:`TOKENS_PER_LINE`; padding is not drawn and not in the scale.  Labels
  come from the vocabulary (:func:`~gradscope.export.vocabulary.read_vocabulary`), else
  they are the token ids.
* ``tabular``: a horizontal bar per feature, the :data:`MAX_FEATURES` largest by
  absolute value, largest on top.
* ``sequence`` and ``other``: a heatmap of the entries (more than two axes folded into
  the rows).

Colours (:mod:`gradscope.export.attribution_views`): gradient-x-input and Integrated
Gradients are signed (the sum over the channel or embedding axis; red positive, blue
negative, white 0, symmetric around 0); saliency and SmoothGrad are magnitudes (the sum
of absolute values; white to red); Grad-CAM uses jet.  Each panel has its own scale,
given in its title (``±0.012``: the colour extremes), and the overlay's opacity grows
with the value, so the picture shows through where the attribution is small.

Drawn like the other plots (:mod:`gradscope.export.plot`: matplotlib's Agg canvas only,
imported on first use, never pyplot; the file written atomically).
:func:`panel_png` draws one panel to PNG bytes, for the HTML page.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..commands.attribute.report import AttributeReport
from .attribution_views import (
    Panel,
    as_grid,
    example_title,
    grey,
    mode_text,
    order_features,
    prepare,
    ramp,
    short_label,
    text_color,
)
from .plot import DPI, _matplotlib, _save, _short
from .vocabulary import read_vocabulary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

    Canvas = Figure | SubFigure

SUFFIXES = (".png",)
OPTION = "--plot"
MAX_EXAMPLES = 8
MAX_FEATURES = 30
"""A tabular panel shows at most this many features (the largest by |value|)."""
TOKENS_PER_LINE = 12
MAX_TOKEN_LINES = 20
"""A token panel draws at most this many lines; its title says how many tokens were
left out (the HTML page shows them all)."""
TOKEN_WIDTH = 0.7
TOKEN_HEIGHT = 0.32
"""Inches: a token's box."""
OVERLAY_ALPHA = 0.85
"""The opacity of the attribution colour at the panel's largest value (0 at 0)."""
CAM_ALPHA = 0.35
"""Grad-CAM's jet map covers its image with at least this opacity, everywhere (and
:data:`OVERLAY_ALPHA` at the map's largest value)."""
BACKGROUND = (0.35, 0.5)
"""An image under an attribution is drawn as grey ``0.35 + 0.5 * grey``: faded, so the
red and blue read clearly, and never white, so its edges show."""
IMAGE_SIZE = 2.6
"""Inches, the side of one image axes."""


# --------------------------------------------------------------------------- colours


def overlay(panel: Panel) -> np.ndarray:
    """The RGB picture of an ``image`` or ``feature_map`` panel with a picture: its
    values coloured (:func:`colours`) and blended over a faded grey copy of it, more
    opaque where the value is larger; resized (nearest) to it when they differ."""
    if panel.picture is None:  # callers check; kept for mypy and for safety
        raise ValueError("overlay() needs a panel with a picture")
    picture = panel.picture
    values = _resize_nearest(panel.values, picture.shape[:2])
    low, span = BACKGROUND
    base = np.repeat((low + span * grey(picture))[..., None], 3, axis=-1)
    share = np.clip(np.nan_to_num(np.abs(values) / panel.limit, nan=0.0), 0.0, 1.0)
    floor = CAM_ALPHA if panel.mode == "cam" else 0.0
    alpha = (floor + (OVERLAY_ALPHA - floor) * share)[..., None]
    return np.asarray((1 - alpha) * base + alpha * colours(panel, values))


def _resize_nearest(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` (2-D) resized to ``shape`` by nearest neighbour; as is when equal."""
    grid = as_grid(values)
    if grid.shape == shape:
        return grid
    rows = np.minimum((np.arange(shape[0]) * grid.shape[0]) // shape[0], grid.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * grid.shape[1]) // shape[1], grid.shape[1] - 1)
    return grid[np.ix_(rows, cols)]


def _jet(share: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return np.asarray(colormaps["jet"](np.clip(share, 0.0, 1.0))[..., :3])


def colours(panel: Panel, values: np.ndarray) -> np.ndarray:
    """``values`` of ``panel`` as RGB: jet for Grad-CAM, else the white-based ramp."""
    if panel.mode == "cam":
        return np.where(
            np.isfinite(values)[..., None], _jet(np.nan_to_num(values) / panel.limit), 0.88
        )
    return ramp(values, panel.limit, panel.mode)


def scale_text(panel: Panel) -> str:
    """The values at the colour extremes: ``±0.012`` (signed) or ``0 … 0.012``."""
    limit = f"{panel.limit:.2g}"
    return f"±{limit}" if panel.mode == "signed" else f"0 … {limit}"


def _panel_title(panel: Panel) -> str:
    return (
        f"{_short(panel.spec.name, 28)}: {mode_text(panel.mode, panel.spec)}, {scale_text(panel)}"
    )


# --------------------------------------------------------------------------- panels


def panel_size(panel: Panel) -> tuple[float, float]:
    """Width and height in inches of one panel."""
    kind = panel.spec.kind
    if kind == "tokens":
        real = panel.values.size - panel.padding
        lines = min(MAX_TOKEN_LINES, max(1, math.ceil(real / TOKENS_PER_LINE)))
        return TOKEN_WIDTH * TOKENS_PER_LINE, 0.7 + TOKEN_HEIGHT * lines
    if kind == "tabular":
        bars = min(MAX_FEATURES, panel.values.size)
        return 5.0, 0.9 + 0.2 * bars
    if panel.picture is not None:
        return 2 * IMAGE_SIZE + 0.4, IMAGE_SIZE
    rows, columns = as_grid(panel.values).shape
    if rows == 1:
        return min(2 * IMAGE_SIZE + 0.4, 1.6 + 0.25 * columns), 1.2
    return IMAGE_SIZE + 0.6, IMAGE_SIZE


def draw_panel(canvas: Canvas, panel: Panel) -> None:
    """Draw ``panel`` on a figure or subfigure, by its input's kind."""
    kind = panel.spec.kind
    if kind == "tokens":
        _draw_tokens(canvas.subplots(), panel)
    elif kind == "tabular":
        _draw_tabular(canvas.subplots(), panel)
    elif panel.picture is not None:
        _draw_over_picture(canvas, panel)
    else:
        _draw_heatmap(canvas.subplots(), panel)


def _draw_over_picture(canvas: Canvas, panel: Panel) -> None:
    """The picture, and the values over it."""
    if panel.picture is None:
        raise ValueError("_draw_over_picture() needs a panel with a picture")
    left, right = canvas.subplots(1, 2)
    picture = panel.picture
    left.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
    left.set_title(_short(panel.spec.overlay or panel.spec.name, 28), fontsize=8)
    right.imshow(overlay(panel))
    right.set_title(_panel_title(panel), fontsize=8)
    for ax in (left, right):
        ax.set_axis_off()


def _draw_heatmap(ax: Axes, panel: Panel) -> None:
    """The values as a heatmap (a 1-D map as a strip), ticks at whole positions."""
    from matplotlib.ticker import MaxNLocator

    grid = as_grid(panel.values)
    ax.imshow(colours(panel, grid), aspect="auto", interpolation="nearest")
    ax.set_title(_panel_title(panel), fontsize=8)
    for axis, size in ((ax.yaxis, grid.shape[0]), (ax.xaxis, grid.shape[1])):
        if size == 1:
            axis.set_ticks([])
        else:
            axis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)


def _draw_tokens(ax: Axes, panel: Panel) -> None:
    """Each real token in a coloured box, :data:`TOKENS_PER_LINE` to a line."""
    if panel.mask is None:
        raise ValueError("_draw_tokens() needs a token panel")
    real = np.flatnonzero(panel.mask)
    fills = ramp(panel.values, panel.limit, panel.mode)
    drawn = real[: MAX_TOKEN_LINES * TOKENS_PER_LINE]
    lines = max(1, math.ceil(drawn.size / TOKENS_PER_LINE))
    for k, position in enumerate(drawn):
        line, column = divmod(k, TOKENS_PER_LINE)
        fill = (float(fills[position][0]), float(fills[position][1]), float(fills[position][2]))
        ax.add_patch(_box(column, line, fill))
        ax.text(
            column + 0.5,
            line + 0.5,
            short_label(panel.labels[position], 10),
            ha="center",
            va="center",
            fontsize=7,
            color=text_color(fill),
        )
    ax.set_xlim(0, TOKENS_PER_LINE)
    ax.set_ylim(lines, 0)
    ax.set_aspect(TOKEN_HEIGHT / TOKEN_WIDTH, anchor="NW")
    ax.set_axis_off()
    hidden = f", {panel.padding} padding not shown" if panel.padding else ""
    if drawn.size < real.size:
        hidden += f", the last {real.size - drawn.size} tokens not shown"
    if not real.size:
        ax.text(TOKENS_PER_LINE / 2, 0.5, "no tokens (all padding)", ha="center", fontsize=8)
    ax.set_title(_panel_title(panel) + hidden, fontsize=8, loc="left")


def _box(column: int, line: int, fill: tuple[float, float, float]) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle(
        (column + 0.04, line + 0.08), 0.92, 0.84, facecolor=fill, edgecolor="#bbbbbb", linewidth=0.4
    )


def _draw_tabular(ax: Axes, panel: Panel) -> None:
    """A bar per feature, the largest :data:`MAX_FEATURES` by absolute value on top."""
    shown, rest = order_features(panel.values, MAX_FEATURES)
    flat = panel.values.reshape(-1)
    values = flat[shown]
    fills = [tuple(c) for c in ramp(np.sign(values), 1.0, panel.mode)]
    ax.barh(np.arange(shown.size), values, color=fills, edgecolor="#666666", linewidth=0.4)
    ax.set_yticks(np.arange(shown.size), [f"feature {i}" for i in shown], fontsize=7)
    ax.set_ylim(shown.size - 0.5, -0.5)
    ax.axvline(0.0, color="#444444", linewidth=0.6)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(f"{_short(panel.spec.name, 28)}: {mode_text(panel.mode, panel.spec)}", fontsize=8)
    if rest:
        ax.set_xlabel(f"+ {rest} more features (smaller |value| or not finite)", fontsize=7)


def panel_png(panel: Panel, dpi: int = 100) -> bytes:
    """One panel, drawn alone, as PNG bytes (for the HTML page)."""
    figure_class, canvas_class = _matplotlib()
    figure = figure_class(figsize=panel_size(panel), dpi=dpi, layout="constrained")
    draw_panel(figure, panel)
    canvas_class(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# --------------------------------------------------------------------------- figure


def _row_title(report: AttributeReport, panel: Panel) -> str:
    title = example_title(report, panel.example)
    error = panel.example.completeness_error
    if error is not None:
        title += f" · completeness error {error:.2%}"
    return title


def _figure(report: AttributeReport, rows: list[list[Panel]], figure_class: Any) -> Figure:
    """Every row of panels, under the report's title."""
    sizes = [[panel_size(p) for p in row] for row in rows]
    widths = [max(s[g][0] for s in sizes) for g in range(len(report.inputs))]
    heights = [max(h for _, h in row) + 0.35 for row in sizes]
    figure: Figure = figure_class(
        figsize=(max(6.0, sum(widths)), sum(heights) + 0.7), dpi=DPI, layout="constrained"
    )
    row_figures = figure.subfigures(len(rows), 1, height_ratios=heights, squeeze=False)[:, 0]
    for row, row_figure in zip(rows, row_figures, strict=True):
        row_figure.suptitle(_row_title(report, row[0]), fontsize=9, x=0.01, ha="left")
        cells = row_figure.subfigures(1, len(row), width_ratios=widths, squeeze=False)[0]
        for panel, cell in zip(row, cells, strict=True):
            draw_panel(cell, panel)
    figure.suptitle(_title(report, len(rows)), fontsize=11, fontweight="bold")
    return figure


def _title(report: AttributeReport, drawn: int) -> str:
    total = len(report.examples)
    count = f"{total} examples" if drawn == total else f"first {drawn} of {total} examples"
    return (
        f"{_short(report.model.name, 60)}: {report.method.name} attributions\n"
        f"target: {report.target.describe()}, {count}"
    )


def plot_attributions(
    report: AttributeReport,
    path: str | Path,
    *,
    force: bool = False,
    max_examples: int = MAX_EXAMPLES,
    vocabulary: Sequence[str] | None = None,
) -> int:
    """Draw the attributions of ``report``'s first ``max_examples`` examples to the PNG
    ``path``; return how many examples were drawn.

    ``report.tensors`` must be set (``keep_tensors=True``), else a one-line
    :class:`~gradscope.errors.UsageError`.  ``vocabulary`` labels token ids.  An
    existing file is overwritten only with ``force``.
    """
    figure_class, canvas_class = _matplotlib()
    target, rows = prepare(
        report,
        path,
        OPTION,
        SUFFIXES,
        force=force,
        max_examples=max_examples,
        vocabulary=vocabulary,
    )
    _save(_figure(report, rows, figure_class), canvas_class, target)
    return len(rows)


__all__ = [
    "MAX_EXAMPLES",
    "OPTION",
    "SUFFIXES",
    "draw_panel",
    "overlay",
    "panel_png",
    "panel_size",
    "plot_attributions",
    "read_vocabulary",
]
