"""What the attribution pictures show, as numpy: shared by ``--plot`` and ``--html``.

A :class:`Panel` is one example's attribution to one attributed input, reduced to what
is drawn: its *values* (one per pixel, token, feature or entry), the picture they go
over, the token labels, and how they are coloured (:data:`Mode`):

* ``signed`` (gradient-x-input, Integrated Gradients, and any method this module does
  not know): the attribution summed over the channel or embedding axis, on a diverging
  white-centred scale symmetric around 0 (red positive, blue negative).  These methods
  split the score among the inputs, and the sign says which way each one pushed it.
* ``magnitude`` (saliency, SmoothGrad): the sum of absolute values over that axis, from
  white to red.  A gradient's sign over the channels of one pixel mostly cancels, and
  its size is what these methods are read for.
* ``cam`` (Grad-CAM): the class activation map, ``max(0, map)``, on a jet scale.

Each panel has its own scale (:attr:`Panel.limit`, the largest absolute value drawn), so
a weak example is not washed out by a strong one.  Padding tokens and non-finite entries
are left out of the scale.  numpy only: no matplotlib here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .._atomic import check_writable
from ..commands.attribute.report import (
    AttributedInput,
    AttributeReport,
    AttributionTensors,
    ExampleAttribution,
)
from ..errors import UsageError
from ..validation import integer

Mode = Literal["signed", "magnitude", "cam"]

MAGNITUDE_METHODS = ("saliency", "smoothgrad")
CAM_METHODS = ("gradcam",)
IMAGE_KINDS = ("image", "feature_map", "sequence", "other")
"""The kinds drawn as a picture (a PNG in the HTML page too); ``tokens`` and
``tabular`` are drawn as labels and bars."""

WHITE = (1.0, 1.0, 1.0)
POSITIVE = (0xB2 / 255, 0x18 / 255, 0x2B / 255)
"""The colour of the largest positive value (RdBu's red)."""
NEGATIVE = (0x21 / 255, 0x66 / 255, 0xAC / 255)
"""The colour of the most negative value (RdBu's blue)."""
PADDING = (0.88, 0.88, 0.88)
LABEL_CHARS = 16
"""Token labels longer than this are cut (with an ellipsis) in pictures."""


@dataclass(frozen=True)
class Panel:
    """One example's attribution to one input, ready to draw.

    ``values``: float64, the positions' values (see :data:`Mode`), NaN where nothing
    is drawn (non-finite entries, padding).  ``picture``: the image under the values,
    ``(H, W, 3)`` or ``(H, W)`` in [0, 1], for ``image`` and ``feature_map`` panels.
    ``labels`` and ``mask``: the token labels and which are real tokens (``tokens``).
    """

    spec: AttributedInput
    example: ExampleAttribution
    mode: Mode
    values: np.ndarray
    picture: np.ndarray | None = None
    labels: tuple[str, ...] = ()
    ids: tuple[int, ...] = ()
    mask: np.ndarray | None = None

    @property
    def limit(self) -> float:
        """The largest finite absolute value drawn (1 when there is none, or it is 0)."""
        finite = np.abs(self.values[np.isfinite(self.values)])
        largest = float(finite.max()) if finite.size else 0.0
        return largest if largest > 0 else 1.0

    @property
    def padding(self) -> int:
        """How many positions are padding (tokens only)."""
        return 0 if self.mask is None else int(np.sum(~self.mask))


def color_mode(method: str) -> Mode:
    """How a method's attributions are coloured (see the module docstring)."""
    if method in CAM_METHODS:
        return "cam"
    return "magnitude" if method in MAGNITUDE_METHODS else "signed"


def mode_text(mode: Mode, spec: AttributedInput) -> str:
    """What a panel's values are: ``Σ over channels``, ``Σ|a| over the embedding``..."""
    axis = _axis_name(spec)
    if mode == "cam":
        return "Grad-CAM, max(0, map)"
    if axis is None:
        return "|a|" if mode == "magnitude" else "a"
    return f"Σ|a| over {axis}" if mode == "magnitude" else f"Σa over {axis}"


def _axis_name(spec: AttributedInput) -> str | None:
    if spec.reduced_axis is None:
        return None
    return {"tokens": "embedding", "image": "channels"}.get(spec.kind, f"axis {spec.reduced_axis}")


def ramp(values: np.ndarray, limit: float, mode: Mode) -> np.ndarray:
    """The colours (``values.shape + (3,)``, RGB in [0, 1]) of ``values`` on a
    white-based scale up to ``limit``: white at 0, the full :data:`POSITIVE` (or, for
    ``signed``, :data:`NEGATIVE`) at ``±limit``; :data:`PADDING` grey where not finite."""
    data = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(data)
    share = np.clip(np.abs(np.where(finite, data, 0.0)) / limit, 0.0, 1.0)[..., None]
    negative = ((data < 0) & (mode == "signed"))[..., None]
    end = np.where(negative, np.array(NEGATIVE), np.array(POSITIVE))
    colours = np.array(WHITE) + share * (end - np.array(WHITE))
    return np.where(finite[..., None], colours, np.array(PADDING))


def ramp_color(value: float, limit: float, mode: Mode) -> tuple[float, float, float]:
    """:func:`ramp` of one value."""
    red, green, blue = (float(c) for c in ramp(np.array(value), limit, mode))
    return red, green, blue


def hex_color(rgb: tuple[float, float, float]) -> str:
    """``#rrggbb`` of an RGB triple in [0, 1]."""
    return "#" + "".join(f"{round(min(1.0, max(0.0, c)) * 255):02x}" for c in rgb)


def text_color(rgb: tuple[float, float, float]) -> str:
    """Black or white, whichever reads better on ``rgb``."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "#000000" if luminance > 0.5 else "#ffffff"


def short_label(label: str, most: int = LABEL_CHARS) -> str:
    """``label`` cut to ``most`` characters with an ellipsis."""
    return label if len(label) <= most else label[: most - 1] + "…"


def target_text(report: AttributeReport, example: ExampleAttribution) -> str:
    """``class 3`` when the example has a class, else the report's target (``loss``)."""
    if example.target is not None:
        return f"class {example.target}"
    return report.target.describe()


def example_title(report: AttributeReport, example: ExampleAttribution) -> str:
    """``example 3 · target class 1 · score 0.812``."""
    return (
        f"example {example.index} · target {target_text(report, example)} · "
        f"score {example.score:.4g}"
    )


# --------------------------------------------------------------------------- panels


def check_report(report: AttributeReport, option: str, max_examples: int) -> AttributionTensors:
    """The report's arrays, or a one-line :class:`UsageError` when they are missing."""
    integer("max_examples", max_examples, minimum=1)
    tensors = report.tensors
    if tensors is None:
        raise UsageError(
            f"{option}: the report holds no attribution arrays; expected a report computed "
            "with keep_tensors=True. Received: a report without tensors"
        )
    if not report.examples or not report.inputs:
        raise UsageError(
            f"{option}: the report has nothing to draw; expected examples and attributed "
            f"inputs. Received: {len(report.examples)} examples, {len(report.inputs)} inputs"
        )
    drawn = min(max_examples, len(report.examples))
    for spec in report.inputs:
        array = tensors.attributions.get(spec.name)
        if array is None or len(array) < drawn:
            found = "none" if array is None else f"{len(array)} rows"
            raise UsageError(
                f"{option}: the report's attribution array for {spec.name!r} is missing "
                f"or short; expected {drawn} rows. Received: {found}"
            )
    return tensors


def panels(
    report: AttributeReport,
    option: str,
    max_examples: int,
    vocabulary: Sequence[str] | None = None,
) -> list[list[Panel]]:
    """The panels drawn: one row per example (the first ``max_examples``), one
    :class:`Panel` per attributed input in each row."""
    tensors = check_report(report, option, max_examples)
    mode = color_mode(report.method.name)
    rows = []
    for row, example in enumerate(report.examples[:max_examples]):
        rows.append(
            [_panel(tensors, spec, example, row, mode, vocabulary) for spec in report.inputs]
        )
    return rows


def prepare(
    report: AttributeReport,
    path: str | Path,
    option: str,
    suffixes: tuple[str, ...],
    *,
    force: bool,
    max_examples: int,
    vocabulary: Sequence[str] | None,
) -> tuple[Path, list[list[Panel]]]:
    """What an export starts with: the checked output path and the :func:`panels`."""
    target = Path(path)
    check_writable(target, suffixes, option, force=force)
    return target, panels(report, option, max_examples, vocabulary)


def _panel(
    tensors: AttributionTensors,
    spec: AttributedInput,
    example: ExampleAttribution,
    row: int,
    mode: Mode,
    vocabulary: Sequence[str] | None,
) -> Panel:
    array = np.asarray(tensors.attributions[spec.name][row], dtype=np.float64)
    if spec.kind == "feature_map":
        return _feature_map_panel(tensors, spec, example, row, array)
    values = positions(array, spec.reduced_axis, mode)
    if spec.kind == "image":
        picture = _input_row(tensors, spec.name, row)
        shown = None if picture is None else display_image(picture, spec.reduced_axis)
        return Panel(spec, example, mode, values, picture=shown)
    if spec.kind == "tokens":
        return _token_panel(tensors, spec, example, row, mode, values, vocabulary)
    return Panel(spec, example, mode, values)


def positions(array: np.ndarray, axis: int | None, mode: Mode) -> np.ndarray:
    """One example's values per position: the attribution summed over ``axis`` (of
    absolute values for ``magnitude``), ``max(0, ·)`` for ``cam``; NaN where an entry
    summed was not finite."""
    entries = np.abs(array) if mode == "magnitude" else array
    if axis is not None and entries.ndim > axis:
        with np.errstate(invalid="ignore"):
            entries = entries.sum(axis=axis)
    values = np.where(np.isfinite(entries), entries, np.nan)
    return np.maximum(values, 0.0) if mode == "cam" else values


def _input_row(tensors: AttributionTensors, name: str | None, row: int) -> np.ndarray | None:
    if name is None or name not in tensors.inputs:
        return None
    return np.asarray(tensors.inputs[name][row])


def display_image(image: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """An input image as ``(H, W, 3)`` RGB or ``(H, W)`` grey in [0, 1]: channels moved
    last, one channel as grey, three (or the first three of four) as RGB, any other
    count averaged to grey; scaled per image from its smallest to its largest value."""
    data = np.asarray(image, dtype=np.float64)
    if channel_axis is not None and data.ndim == 3:
        data = np.moveaxis(data, channel_axis, -1)
    if data.ndim == 3:
        channels = data.shape[-1]
        data = data[..., :3] if channels in (3, 4) else data.mean(axis=-1)
    data = np.where(np.isfinite(data), data, np.nan)
    low, high = np.nanmin(data, initial=np.inf), np.nanmax(data, initial=-np.inf)
    if not high > low:
        return np.full(data.shape, 0.5)
    return np.nan_to_num((data - low) / (high - low), nan=0.0)


def grey(picture: np.ndarray) -> np.ndarray:
    """A display image (:func:`display_image`) as ``(H, W)`` grey."""
    if picture.ndim == 2:
        return picture
    return np.asarray(picture @ np.array([0.299, 0.587, 0.114]))


def _feature_map_panel(
    tensors: AttributionTensors,
    spec: AttributedInput,
    example: ExampleAttribution,
    row: int,
    array: np.ndarray,
) -> Panel:
    """Grad-CAM: the resized map over its image when there is one, else the map."""
    picture = _input_row(tensors, spec.overlay, row)
    if picture is not None and tensors.resized is not None:
        values = positions(np.asarray(tensors.resized[row], dtype=np.float64), None, "cam")
        axis = _channel_axis(picture)
        return Panel(spec, example, "cam", values, picture=display_image(picture, axis))
    values = positions(array, spec.reduced_axis, "cam")
    shown = None if picture is None else display_image(picture, _channel_axis(picture))
    return Panel(spec, example, "cam", values, picture=shown)


def _channel_axis(picture: np.ndarray) -> int | None:
    """The channel axis of an overlay image (channels last, as Keras feeds them)."""
    return picture.ndim - 1 if picture.ndim == 3 else None


def _token_panel(
    tensors: AttributionTensors,
    spec: AttributedInput,
    example: ExampleAttribution,
    row: int,
    mode: Mode,
    values: np.ndarray,
    vocabulary: Sequence[str] | None,
) -> Panel:
    values = values.reshape(-1)
    ids_row = _flat_row(_input_row(tensors, spec.name, row), values.size)
    ids = tuple(range(values.size)) if ids_row is None else tuple(int(i) for i in ids_row)
    masks = tensors.masks.get(spec.name)
    mask_row = None if masks is None else _flat_row(np.asarray(masks[row]), values.size)
    mask = np.ones(values.size, dtype=bool) if mask_row is None else mask_row.astype(bool)
    shown = np.where(mask, values, np.nan)
    labels = tuple(token_label(i, vocabulary) for i in ids)
    return Panel(spec, example, mode, shown, labels=labels, ids=ids, mask=mask)


def _flat_row(array: np.ndarray | None, size: int) -> np.ndarray | None:
    """``array`` flattened when it has one entry per token, else ``None`` (then the
    tokens are labelled by position, or all taken as real)."""
    if array is None or array.size != size:
        return None
    return array.reshape(-1)


def token_label(token: int, vocabulary: Sequence[str] | None) -> str:
    """``vocabulary[token]``, or the id (``#id`` when outside the vocabulary)."""
    if vocabulary is None:
        return str(token)
    if 0 <= token < len(vocabulary):
        return vocabulary[token]
    return f"#{token}"


def as_grid(values: np.ndarray) -> np.ndarray:
    """Values as 2-D for a heatmap: a scalar as 1×1, a vector as one row, more axes
    folded into the rows (the last axis stays the columns)."""
    if values.ndim == 0:
        return values.reshape(1, 1)
    if values.ndim == 1:
        return values.reshape(1, -1)
    return values.reshape(-1, values.shape[-1])


def order_features(values: np.ndarray, most: int) -> tuple[np.ndarray, int]:
    """The indices of the ``most`` largest finite ``|values|``, largest first, and how
    many other positions were left out."""
    flat = values.reshape(-1)
    finite = np.flatnonzero(np.isfinite(flat))
    ranked = finite[np.argsort(-np.abs(flat[finite]), kind="stable")]
    return ranked[:most], int(flat.size - min(most, ranked.size))


__all__ = [
    "IMAGE_KINDS",
    "Mode",
    "Panel",
    "as_grid",
    "color_mode",
    "display_image",
    "example_title",
    "hex_color",
    "mode_text",
    "order_features",
    "panels",
    "positions",
    "prepare",
    "ramp",
    "ramp_color",
    "short_label",
    "target_text",
    "text_color",
    "token_label",
]
