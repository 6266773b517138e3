"""``inspect``'s report: :class:`Report` and its rows (schema ``gradscope.inspect/1``).

Plain data only (numpy arrays, frozen dataclasses): :meth:`Report.to_dict` is the JSON
contract and :meth:`Report.from_dict` its exact inverse.  The pieces every report shares
(:class:`~gradscope.report.ModelInfo`, :class:`~gradscope.report.LossInfo`,
:class:`~gradscope.report.BatchInfo`, :class:`~gradscope.report.TensorStats`, the JSON
mixin) live in :mod:`gradscope.report`, which also re-exports the names here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._reading import Fields
from ...render import renders_with
from ...report import (
    BatchInfo,
    LossInfo,
    ModelInfo,
    TensorStats,
    ValueStats,
    _document,
    _JsonMixin,
    _read_batch,
    _read_loss,
    _read_model,
    _read_stats,
    _read_value_stats,
    _statistics,
    _stats_dict,
    finite_or_none,
    size_of,
)

if TYPE_CHECKING:
    from ...health import Health


SCHEMA = "gradscope.inspect/1"


@dataclass(frozen=True)
class VariableRow:
    """Gradient of the loss with respect to one trainable variable.

    ``adapts`` is set on LoRA adapter rows (``lora_kernel_a``/``_b``,
    ``lora_embeddings_a``/``_b`` of a Keras layer with LoRA enabled): the path of the
    frozen weight the adapter updates (``.../query/kernel``), which is not reported
    itself since it is not trainable.
    """

    path: str
    layer: str
    layer_class: str
    shape: tuple[int, ...]
    dtype: str
    grad: TensorStats | None
    weight_l2: float
    ratio: float | None
    note: str | None = None
    rows_touched: int | None = None
    adapts: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "layer": self.layer,
            "class": self.layer_class,
            "shape": list(self.shape),
            "size": size_of(self.shape),
            "dtype": self.dtype,
            "grad": _stats_dict(self.grad),
            "weight_l2": finite_or_none(self.weight_l2),
            "ratio": finite_or_none(self.ratio),
        }
        if self.rows_touched is not None:
            out["rows_touched"] = self.rows_touched
        if self.adapts is not None:
            out["adapts"] = self.adapts
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class InputRow:
    """Gradient of the loss with respect to one model input."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    grad: TensorStats | None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.shape),
            "size": size_of(self.shape),
            "dtype": self.dtype,
            "grad": _stats_dict(self.grad),
        }
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class ActivationRow:
    """Gradient of the loss with respect to one layer output, and the output itself.

    ``path`` is the slash-joined layer names from the top-level model (``encoder/dense_1``).
    A layer called more than once gets one row per call, ``@N`` appended to the path
    (``N`` = ``call``, from 0); a layer returning several tensors gets one row per tensor,
    ``:K`` appended (``K`` = ``output``).
    """

    layer: str
    path: str
    layer_class: str
    call: int
    output: int
    shape: tuple[int, ...]
    dtype: str
    grad: TensorStats | None
    value: ValueStats | None
    note: str | None = None
    activation: str | None = None
    """The layer's activation function (``relu``, ...) when it has one."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "layer": self.layer,
            "path": self.path,
            "class": self.layer_class,
            "call": self.call,
            "output": self.output,
            "shape": list(self.shape),
            "size": size_of(self.shape),
            "dtype": self.dtype,
            "grad": _stats_dict(self.grad),
            "value": _stats_dict(self.value),
        }
        if self.activation is not None:
            out["activation"] = self.activation
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class GradientTensors:
    """The raw gradient tensors behind a report, keyed like the report rows.

    ``variables`` is keyed by variable path, ``inputs`` by input name and ``activations``
    by activation path.  Only present when asked for (``keep_tensors=True``), since for a
    large model these arrays are as large as the model and its activations.
    """

    variables: Mapping[str, np.ndarray]
    inputs: Mapping[str, np.ndarray]
    activations: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class NormSpread:
    """Min, median and max of a set of values (per-batch or per-example norms)."""

    min: float
    median: float
    max: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "min": finite_or_none(self.min),
            "median": finite_or_none(self.median),
            "max": finite_or_none(self.max),
        }


@dataclass(frozen=True)
class VariableSpread:
    """One variable across batches: its per-batch gradient norms, the spread of the
    batch gradients around their mean ``E||g - E[g]||^2`` and the signal-to-noise ratio
    ``||E[g]||^2 / E||g - E[g]||^2``."""

    path: str
    norms: NormSpread
    variance: float
    snr: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "norms": self.norms.to_dict(),
            "variance": finite_or_none(self.variance),
            "snr": finite_or_none(self.snr),
        }


@dataclass(frozen=True)
class BatchesReport:
    """The ``batches`` section of a multi-batch report (the rows describe the mean)."""

    count: int
    batch_size: int
    rows: int
    max_batches: int | None
    losses: NormSpread
    global_norms: NormSpread
    variables: tuple[VariableSpread, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "batch_size": self.batch_size,
            "rows": self.rows,
            "max_batches": self.max_batches,
            "loss": self.losses.to_dict(),
            "global_norm": self.global_norms.to_dict(),
            "variables": [row.to_dict() for row in self.variables],
        }


@dataclass(frozen=True)
class PerSampleRow:
    """Per-example gradient norms of one variable (or of all, ``path`` ``"*"``): their
    spread, and the examples with the largest norms, largest first."""

    path: str
    norms: NormSpread
    top: tuple[int, ...]
    top_norms: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "norms": self.norms.to_dict(),
            "top": [
                {"index": int(i), "norm": finite_or_none(n)}
                for i, n in zip(self.top, self.top_norms, strict=True)
            ],
        }


@dataclass(frozen=True)
class PerSampleReport:
    """The ``per_sample`` section: per-example gradient norms, overall and per variable;
    ``method`` says how the examples were mapped (and any fallback, with its reason)."""

    examples: int
    total: PerSampleRow
    variables: tuple[PerSampleRow, ...]
    method: str = "vectorized"

    def to_dict(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "method": self.method,
            "total": self.total.to_dict(),
            "variables": [row.to_dict() for row in self.variables],
        }


@renders_with("gradscope.commands.inspect.render")
@dataclass(frozen=True)
class Report(_JsonMixin):
    """Everything one ``inspect`` run found, as plain data."""

    model: ModelInfo
    batch: BatchInfo
    loss: LossInfo
    training: bool
    variables: tuple[VariableRow, ...]
    inputs: tuple[InputRow, ...]
    activations: tuple[ActivationRow, ...]
    global_grad_norm: float
    tensors: GradientTensors | None = field(default=None, compare=False, repr=False)
    schema: str = SCHEMA
    batches: BatchesReport | None = None
    per_sample: PerSampleReport | None = None
    health: Health | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure of schema ``gradscope.inspect/1`` (see the README).

        ``batches`` (several batches) and ``per_sample`` (``--per-sample``) are present
        only when they were computed.
        """
        out = {
            **self._run_dict(),
            "global_grad_norm": finite_or_none(self.global_grad_norm),
            "variables": [row.to_dict() for row in self.variables],
            "inputs": [row.to_dict() for row in self.inputs],
            "activations": [row.to_dict() for row in self.activations],
        }
        if self.health is not None:
            out["health"] = self.health.to_dict()
        if self.batches is not None:
            out["batches"] = self.batches.to_dict()
        if self.per_sample is not None:
            out["per_sample"] = self.per_sample.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "report") -> Report:
        """The report whose :meth:`to_dict` is ``data``: the exact inverse, for a report
        saved as JSON (``gradscope inspect --format json``).

        A ``null`` where a float belongs (a non-finite value) reads as NaN, and
        ``tensors`` (never in the JSON) is ``None``.  Anything that is not such a
        document raises :class:`~gradscope.errors.DataLoadError` naming ``source``, the
        key and what was found.
        """
        return _read_report(_document(data, source, SCHEMA, "a gradscope inspect report"))


def _read_variable(f: Fields) -> VariableRow:
    return VariableRow(
        path=f.text("path"),
        layer=f.text("layer"),
        layer_class=f.text("class"),
        shape=f.shape(),
        dtype=f.text("dtype"),
        grad=_read_stats(_statistics(f, "grad")),
        weight_l2=f.number("weight_l2", norm=True),
        ratio=f.optional_number("ratio", norm=True),
        note=f.optional_text("note"),
        rows_touched=f.optional_int("rows_touched"),
        adapts=f.optional_text("adapts"),
    )


def _read_input(f: Fields) -> InputRow:
    return InputRow(
        name=f.text("name"),
        shape=f.shape(),
        dtype=f.text("dtype"),
        grad=_read_stats(_statistics(f, "grad")),
        note=f.optional_text("note"),
    )


def _read_activation(f: Fields) -> ActivationRow:
    return ActivationRow(
        layer=f.text("layer"),
        path=f.text("path"),
        layer_class=f.text("class"),
        call=f.count("call"),
        output=f.count("output"),
        shape=f.shape(),
        dtype=f.text("dtype"),
        grad=_read_stats(_statistics(f, "grad")),
        value=_read_value_stats(_statistics(f, "value")),
        note=f.optional_text("note"),
        activation=f.optional_text("activation"),
    )


def _read_spread(f: Fields) -> NormSpread:
    return NormSpread(f.number("min"), f.number("median"), f.number("max"))


def _read_batches(f: Fields) -> BatchesReport:
    return BatchesReport(
        count=f.count("count"),
        batch_size=f.count("batch_size"),
        rows=f.count("rows"),
        max_batches=f.optional_int("max_batches"),
        losses=_read_spread(f.object("loss")),
        global_norms=_read_spread(f.object("global_norm")),
        variables=tuple(
            VariableSpread(
                path=v.text("path"),
                norms=_read_spread(v.object("norms")),
                variance=v.number("variance"),
                snr=v.number("snr"),
            )
            for v in f.objects("variables")
        ),
    )


def _read_per_sample_row(f: Fields) -> PerSampleRow:
    top = f.objects("top")
    return PerSampleRow(
        path=f.text("path"),
        norms=_read_spread(f.object("norms")),
        top=tuple(t.count("index") for t in top),
        top_norms=tuple(t.number("norm", norm=True) for t in top),
    )


def _read_per_sample(f: Fields) -> PerSampleReport:
    return PerSampleReport(
        examples=f.count("examples"),
        total=_read_per_sample_row(f.object("total")),
        variables=tuple(_read_per_sample_row(v) for v in f.objects("variables")),
        method=f.text("method"),
    )


def _read_report(f: Fields) -> Report:
    from ...health import read_health

    health, batches, per_sample = (
        f.optional_object(k) for k in ("health", "batches", "per_sample")
    )
    return Report(
        model=_read_model(f.object("model")),
        batch=_read_batch(f.object("batch")),
        loss=_read_loss(f.object("loss")),
        training=f.flag("training"),
        variables=tuple(_read_variable(row) for row in f.objects("variables")),
        inputs=tuple(_read_input(row) for row in f.objects("inputs")),
        activations=tuple(_read_activation(row) for row in f.objects("activations")),
        global_grad_norm=f.number("global_grad_norm", norm=True),
        batches=None if batches is None else _read_batches(batches),
        per_sample=None if per_sample is None else _read_per_sample(per_sample),
        health=None if health is None else read_health(health),
    )
