"""The ``attribute`` report: plain, frozen data (schema ``gradscope.attribute/1``).

Like the other reports it holds only Python scalars and tuples, plus (when asked for)
the full attribution arrays as numpy in :class:`AttributionTensors`, which the JSON
leaves out.  :meth:`AttributeReport.to_dict` is exactly the JSON output, with non-finite
floats as ``None``; :meth:`AttributeReport.from_dict` is its inverse.

What is attributed (:class:`AttributedInput`): each floating-point model input itself;
each integer input (token ids) through the output of the layer that embeds it (its
``through``); for Grad-CAM, the chosen layer's feature map.  An example's *positions*
are its attribution summed over the attributed tensor's channel or embedding axis
(``reduced_axis``), so that a position is a pixel, a token or a feature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..._reading import Fields
from ...render import renders_with
from ...report import (
    BatchInfo,
    LossInfo,
    ModelInfo,
    _document,
    _JsonMixin,
    _read_batch,
    _read_loss,
    _read_model,
    finite_or_none,
)

if TYPE_CHECKING:  # numpy stays out of `gradscope --help`
    import numpy as np

ATTRIBUTE_SCHEMA = "gradscope.attribute/1"

InputKind = Literal["image", "tokens", "tabular", "sequence", "other", "feature_map"]
INPUT_KINDS: tuple[str, ...] = ("image", "tokens", "tabular", "sequence", "other", "feature_map")
"""How an attributed tensor is drawn: ``image`` (height, width, channels; a heatmap
over the picture), ``tokens`` (an embedding output: each token coloured), ``tabular``
(features: a bar chart), ``sequence`` and ``other`` (a heatmap of the entries),
``feature_map`` (Grad-CAM's map, drawn over the image input it was computed from)."""

COMPLETENESS_WARNING = 0.01
"""Integrated Gradients warns when an example's completeness error is above 1%."""


@dataclass(frozen=True)
class AttributedInput:
    """One attributed tensor, per example.

    ``name`` is the model input's name (Grad-CAM: the layer's path).  ``shape`` is the
    attribution's shape without the batch axis: the input's own, or for token ids the
    embedding output's (tokens, embedding).  ``through`` names the layer whose output
    was attributed for an integer input (``None`` for a float input).  ``reduced_axis``
    is the axis of ``shape`` that positions sum over (channels, embedding), or ``None``
    when every entry is a position.  ``overlay``: for Grad-CAM, the input the map is
    drawn over (``None`` when there is no image input).
    """

    name: str
    kind: InputKind
    shape: tuple[int, ...]
    dtype: str
    through: str | None = None
    reduced_axis: int | None = None
    overlay: str | None = None

    @property
    def position_shape(self) -> tuple[int, ...]:
        """The shape of one example's positions: ``shape`` without ``reduced_axis``."""
        if self.reduced_axis is None:
            return self.shape
        return tuple(d for i, d in enumerate(self.shape) if i != self.reduced_axis)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "through": self.through,
            "reduced_axis": self.reduced_axis,
            "overlay": self.overlay,
        }

    @classmethod
    def from_dict(cls, f: Fields) -> AttributedInput:
        return cls(
            name=f.text("name"),
            kind=f.choice("kind", INPUT_KINDS),  # type: ignore[arg-type]
            shape=f.shape("shape"),
            dtype=f.text("dtype"),
            through=f.optional_text("through"),
            reduced_axis=f.optional_int("reduced_axis"),
            overlay=f.optional_text("overlay"),
        )


@dataclass(frozen=True)
class TopPosition:
    """One of an example's largest attributions (by absolute value): its position (a
    pixel ``(row, column)``, a token ``(t,)``, a feature ``(f,)``) and its value."""

    position: tuple[int, ...]
    value: float

    def to_dict(self) -> dict[str, Any]:
        return {"position": list(self.position), "value": finite_or_none(self.value)}

    @classmethod
    def from_dict(cls, f: Fields) -> TopPosition:
        return cls(position=f.shape("position"), value=f.number("value"))


@dataclass(frozen=True)
class InputAttribution:
    """An example's attribution to one :class:`AttributedInput`, summarized.

    ``total`` is the sum of every entry (what Integrated Gradients' completeness
    compares), ``abs_total`` the sum of absolute values, ``l2`` and ``max_abs`` the
    norms, ``nonfinite`` the NaN and infinite entries; ``top`` the largest positions
    by absolute value, largest first.
    """

    name: str
    total: float
    abs_total: float
    l2: float
    max_abs: float
    nonfinite: int
    top: tuple[TopPosition, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "total": finite_or_none(self.total),
            "abs_total": finite_or_none(self.abs_total),
            "l2": finite_or_none(self.l2),
            "max_abs": finite_or_none(self.max_abs),
            "nonfinite": int(self.nonfinite),
            "top": [item.to_dict() for item in self.top],
        }

    @classmethod
    def from_dict(cls, f: Fields) -> InputAttribution:
        return cls(
            name=f.text("name"),
            total=f.number("total"),
            abs_total=f.number("abs_total", norm=True),
            l2=f.number("l2", norm=True),
            max_abs=f.number("max_abs", norm=True),
            nonfinite=f.count("nonfinite"),
            top=tuple(TopPosition.from_dict(item) for item in f.objects("top")),
        )


@dataclass(frozen=True)
class ExampleAttribution:
    """One example: its row in the data, the class attributed (``None`` for the loss,
    or when a sequence output's class differs by position), the target's ``score``
    f(x), and one :class:`InputAttribution` per attributed input.

    Integrated Gradients adds ``baseline_score`` f(x') and ``completeness_error``,
    |Σ attributions − (f(x) − f(x'))| / |f(x) − f(x')| (``None`` when f(x) = f(x')).
    """

    index: int
    target: int | None
    score: float
    inputs: tuple[InputAttribution, ...]
    baseline_score: float | None = None
    completeness_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "target": self.target,
            "score": finite_or_none(self.score),
            "baseline_score": finite_or_none(self.baseline_score),
            "completeness_error": finite_or_none(self.completeness_error),
            "inputs": [item.to_dict() for item in self.inputs],
        }

    @classmethod
    def from_dict(cls, f: Fields) -> ExampleAttribution:
        return cls(
            index=f.count("index"),
            target=f.optional_int("target"),
            score=f.number("score"),
            inputs=tuple(InputAttribution.from_dict(item) for item in f.objects("inputs")),
            baseline_score=f.optional_number("baseline_score"),
            completeness_error=f.optional_number("completeness_error", norm=True),
        )


@dataclass(frozen=True)
class TargetInfo:
    """What was attributed: ``kind`` (``loss``, ``class``, ``predicted``), the class
    index of a ``class`` target, the ``output`` a class target reads, and whether it
    read that output's ``logits``."""

    kind: str
    index: int | None = None
    output: str | None = None
    logits: bool = False

    def describe(self) -> str:
        """``loss``, ``class 3 of probs``, ``predicted class of probs (logits)``."""
        if self.kind == "loss":
            return "loss"
        what = f"class {self.index}" if self.kind == "class" else "predicted class"
        where = f" of {self.output}" if self.output else ""
        return what + where + (" (logits)" if self.logits else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "index": self.index,
            "output": self.output,
            "logits": self.logits,
        }

    @classmethod
    def from_dict(cls, f: Fields) -> TargetInfo:
        return cls(
            kind=f.choice("kind", ("loss", "class", "predicted")),
            index=f.optional_int("index"),
            output=f.optional_text("output"),
            logits=f.flag("logits"),
        )


@dataclass(frozen=True)
class MethodInfo:
    """The method and the settings it ran with (``None`` where the method has none):
    Integrated Gradients' ``steps``, ``rule`` and ``baseline``; SmoothGrad's ``samples``
    and ``noise``; Grad-CAM's ``layer`` (its path) and whether it was ``chosen`` by
    gradscope (the last convolution) rather than named by ``--layer``."""

    name: str
    steps: int | None = None
    rule: str | None = None
    baseline: str | None = None
    samples: int | None = None
    noise: float | None = None
    layer: str | None = None
    chosen: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "steps": self.steps,
            "rule": self.rule,
            "baseline": self.baseline,
            "samples": self.samples,
            "noise": finite_or_none(self.noise),
            "layer": self.layer,
            "chosen": self.chosen,
        }

    @classmethod
    def from_dict(cls, f: Fields) -> MethodInfo:
        return cls(
            name=f.text("name"),
            steps=f.optional_int("steps"),
            rule=f.optional_text("rule"),
            baseline=f.optional_text("baseline"),
            samples=f.optional_int("samples"),
            noise=f.optional_number("noise"),
            layer=f.optional_text("layer"),
            chosen=f.flag("chosen"),
        )


@dataclass(frozen=True)
class Timing:
    """How the work ran: ``rows`` model evaluations (examples times steps or samples)
    in calls of at most ``chunk_rows`` rows, the compiled function traced ``traces``
    times in all."""

    seconds: float
    rows: int
    chunk_rows: int
    traces: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "rows": self.rows,
            "chunk_rows": self.chunk_rows,
            "traces": self.traces,
        }

    @classmethod
    def from_dict(cls, f: Fields) -> Timing:
        return cls(
            seconds=f.number("seconds"),
            rows=f.count("rows"),
            chunk_rows=f.count("chunk_rows"),
            traces=f.count("traces"),
        )


@dataclass(frozen=True)
class AttributionTensors:
    """The full arrays behind a report, for ``--save``, ``--plot`` and ``--html``.

    ``attributions``: by :attr:`AttributedInput.name`, shape ``(examples, *shape)``.
    ``inputs``: the model's input arrays by input name, as fed (token ids for token
    inputs), for drawing.  ``masks``: by token input name, ``(examples, tokens)``
    booleans, ``True`` for a real token and ``False`` for padding.  ``resized``: for
    Grad-CAM, the map resized (bilinear) to its overlay input's height and width.
    """

    attributions: Mapping[str, np.ndarray]
    inputs: Mapping[str, np.ndarray]
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)
    resized: np.ndarray | None = None


@renders_with("gradscope.commands.attribute.render")
@dataclass(frozen=True)
class AttributeReport(_JsonMixin):
    """Everything one ``attribute`` run found, as plain data.

    ``loss`` is the model's loss on the data at the real inputs (whatever the target);
    ``inputs`` what was attributed; ``examples`` one record per example, in data order.
    ``tensors`` holds the full arrays when they were kept (never in the JSON).
    """

    model: ModelInfo
    batch: BatchInfo
    loss: LossInfo
    method: MethodInfo
    target: TargetInfo
    inputs: tuple[AttributedInput, ...]
    examples: tuple[ExampleAttribution, ...]
    seed: int
    timing: Timing
    training: bool = False
    schema: str = ATTRIBUTE_SCHEMA
    notes: tuple[str, ...] = ()
    tensors: AttributionTensors | None = field(default=None, compare=False, repr=False)

    def completeness(self) -> tuple[float | None, int]:
        """Integrated Gradients: the largest completeness error over the examples
        (``None`` when none has one) and how many are above :data:`COMPLETENESS_WARNING`."""
        errors = [e.completeness_error for e in self.examples if e.completeness_error is not None]
        finite = [e for e in errors if math.isfinite(e)]
        if not finite:
            return None, 0
        return max(finite), sum(e > COMPLETENESS_WARNING for e in finite)

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure of schema ``gradscope.attribute/1`` (see the README)."""
        worst, above = self.completeness()
        out: dict[str, Any] = {
            **self._run_dict(),
            "seed": self.seed,
            "method": self.method.to_dict(),
            "target": self.target.to_dict(),
            "inputs": [item.to_dict() for item in self.inputs],
            "examples": [item.to_dict() for item in self.examples],
            "completeness": None
            if worst is None
            else {"max_error": worst, "above_1pct": above, "threshold": COMPLETENESS_WARNING},
            "timing": self.timing.to_dict(),
        }
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "report") -> AttributeReport:
        """The report :meth:`to_dict` wrote (without :attr:`tensors`), or a one-line
        :class:`~gradscope.errors.DataError` naming the key that is wrong."""
        f = _document(data, source, ATTRIBUTE_SCHEMA, "an attribute report")
        return cls(
            model=_read_model(f.object("model")),
            batch=_read_batch(f.object("batch")),
            loss=_read_loss(f.object("loss")),
            method=MethodInfo.from_dict(f.object("method")),
            target=TargetInfo.from_dict(f.object("target")),
            inputs=tuple(AttributedInput.from_dict(item) for item in f.objects("inputs")),
            examples=tuple(ExampleAttribution.from_dict(item) for item in f.objects("examples")),
            seed=f.count("seed"),
            timing=Timing.from_dict(f.object("timing")),
            training=f.flag("training"),
            notes=f.texts("notes") if f.has("notes") else (),
        )


__all__ = [
    "ATTRIBUTE_SCHEMA",
    "COMPLETENESS_WARNING",
    "INPUT_KINDS",
    "AttributeReport",
    "AttributedInput",
    "AttributionTensors",
    "ExampleAttribution",
    "InputAttribution",
    "MethodInfo",
    "TargetInfo",
    "Timing",
    "TopPosition",
]
