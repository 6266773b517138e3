"""The inspect report: plain, frozen data.

A :class:`Report` holds only Python scalars, tuples and (optionally) numpy arrays, never
TensorFlow or rich objects, so it can be pickled by the caller, compared in tests and
rendered by any renderer.  :meth:`Report.to_dict` gives exactly the structure of the JSON
output (schema ``gradscope.inspect/1``); non-finite floats become ``None`` there so the
JSON stays valid, and the ``nonfinite`` counts say why a value is missing.

The pieces every report shares (:class:`ModelInfo`, :class:`BatchInfo`,
:class:`LossInfo`, :func:`finite_or_none`, the JSON mixin) live here too.  The
``hessian`` report types live in :mod:`gradscope.commands.hessian.report`; this module
still exports their names.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._reading import ABSENT, Fields, Found
from .render import renders_with

if TYPE_CHECKING:
    from .commands.hessian.report import HESSIAN_SCHEMA as HESSIAN_SCHEMA
    from .commands.hessian.report import CrossBlock as CrossBlock
    from .commands.hessian.report import Density as Density
    from .commands.hessian.report import HessianBlock as HessianBlock
    from .commands.hessian.report import HessianReport as HessianReport
    from .health import Health

SCHEMA = "gradscope.inspect/1"

LossKind = Literal["compiled", "override", "sum_of_outputs"]
BatchSource = Literal["file", "synthetic"]


def finite_or_none(value: float | None) -> float | None:
    """Return ``value`` as a float, or ``None`` when it is missing, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class TensorStats:
    """Summary statistics of one tensor, reduced in float32 (or wider) in the graph.

    ``std`` is the population standard deviation (ddof=0).  ``zero_frac`` counts exact
    zeros.  ``nonfinite`` counts NaN and +/-Inf entries; when it is non-zero the other
    statistics are computed over all entries and may themselves be non-finite.
    """

    l2: float
    max_abs: float
    mean: float
    std: float
    zero_frac: float
    nonfinite: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "l2": finite_or_none(self.l2),
            "max_abs": finite_or_none(self.max_abs),
            "mean": finite_or_none(self.mean),
            "std": finite_or_none(self.std),
            "zero_frac": finite_or_none(self.zero_frac),
            "nonfinite": int(self.nonfinite),
        }


@dataclass(frozen=True)
class ValueStats(TensorStats):
    """Statistics of an activation (a layer's output value), plus dead units.

    A *unit* is one position on the last axis (a feature or a channel).  It is dead when
    it is exactly zero for every example and every other position in the batch.
    ``dead_frac`` is ``None`` for scalar outputs.
    """

    dead_frac: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["dead_frac"] = finite_or_none(self.dead_frac)
        return out


def size_of(shape: tuple[int, ...]) -> int | None:
    """Number of entries of a tensor of ``shape`` (``None`` if a dimension is unknown)."""
    if any(d < 0 for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64))


def _stats_dict(stats: TensorStats | None) -> dict[str, Any] | None:
    return None if stats is None else stats.to_dict()


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
class LossInfo:
    """Which loss was differentiated, and its value on the batch.

    ``value`` is the total (data loss plus ``regularization``).  ``source`` is a
    human-readable description such as ``compiled: categorical_crossentropy``.
    """

    value: float
    source: str
    kind: LossKind
    regularization: float = 0.0
    regularization_terms: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": finite_or_none(self.value),
            "source": self.source,
            "kind": self.kind,
            "regularization": finite_or_none(self.regularization),
            "regularization_terms": self.regularization_terms,
        }


@dataclass(frozen=True)
class BatchInfo:
    """Where the batch came from and how large it is."""

    source: BatchSource
    size: int
    path: str | None = None
    seed: int | None = None
    has_targets: bool = True
    keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "synthetic": self.source == "synthetic",
            "size": self.size,
            "path": self.path,
            "seed": self.seed,
            "has_targets": self.has_targets,
            "keys": list(self.keys),
        }


@dataclass(frozen=True)
class ModelInfo:
    """The model that was inspected."""

    name: str
    class_name: str
    path: str | None
    format: str
    trainable_params: int
    layers: int
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """``notes`` (what the format cannot give, e.g. a SavedModel's layer outputs)
        appears only when there is one."""
        out: dict[str, Any] = {
            "name": self.name,
            "class": self.class_name,
            "path": self.path,
            "format": self.format,
            "trainable_params": self.trainable_params,
            "layers": self.layers,
        }
        if self.notes:
            out["notes"] = list(self.notes)
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


class _JsonMixin:
    """``to_json`` for report classes that define ``to_dict``, and their common keys."""

    schema: str
    model: ModelInfo
    batch: BatchInfo
    loss: LossInfo
    training: bool

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def _run_dict(self) -> dict[str, Any]:
        """The keys every report starts with: what was run, on what, with which loss."""
        return {
            "schema": self.schema,
            "model": self.model.to_dict(),
            "batch": self.batch.to_dict(),
            "loss": self.loss.to_dict(),
            "training": self.training,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text: valid JSON even when values are NaN or infinite."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    # -- display: the CLI's table in a terminal or a notebook -------------------------

    def _table(self, width: int | None, color: bool) -> str:
        from .render import OutputFormat, render

        return render(self, OutputFormat.TABLE, width=width, color=color)  # type: ignore[arg-type]

    def __rich_console__(self, console: Any, options: Any) -> Any:
        """``rich.print(report)``: the table, at the console's width, in colour."""
        from rich.text import Text

        yield Text.from_ansi(self._table(options.max_width, color=True))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython's terminal display: the plain table."""
        printer.text("..." if cycle else self._table(None, color=False))

    def _repr_html_(self) -> str:
        """Jupyter's display: the coloured table as HTML (rich's export)."""
        from rich.console import Console
        from rich.text import Text

        console = Console(record=True, width=140, file=io.StringIO(), force_jupyter=False)
        console.print(Text.from_ansi(self._table(140, color=True)))
        return console.export_html(inline_styles=True, code_format="<pre>{code}</pre>")


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


# -- reading a report back: the inverse of to_dict ------------------------------------------


def _document(data: Any, source: str, schema: str, what: str) -> Fields:
    """``data`` as the top-level object of a report of ``schema``, or a one-line error."""
    top = Fields({}, source)
    expected = f"{what} (JSON object with schema '{schema}')"
    if not isinstance(data, dict):
        top.fail(None, expected, Found(f"a JSON {type(data).__name__}"))
    found = data.get("schema", ABSENT)
    if found != schema:
        shown = "an object without a 'schema' key" if found is ABSENT else f"schema {found!r}"
        top.fail(None, expected, Found(shown))
    return Fields(data, source)


def _stats_values(f: Fields) -> dict[str, Any]:
    return {
        "l2": f.number("l2", norm=True),
        "max_abs": f.number("max_abs", norm=True),
        "mean": f.number("mean"),
        "std": f.number("std", norm=True),
        "zero_frac": f.number("zero_frac"),
        "nonfinite": f.count("nonfinite"),
    }


def _read_stats(f: Fields | None) -> TensorStats | None:
    return None if f is None else TensorStats(**_stats_values(f))


def _read_value_stats(f: Fields | None) -> ValueStats | None:
    if f is None:
        return None
    return ValueStats(**_stats_values(f), dead_frac=f.optional_number("dead_frac"))


def _statistics(f: Fields, key: str) -> Fields | None:
    return f.optional_object(key, "a statistics object or null")


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


def _read_loss(f: Fields) -> LossInfo:
    return LossInfo(
        value=f.number("value"),
        source=f.text("source"),
        kind=f.choice("kind", ("compiled", "override", "sum_of_outputs")),  # type: ignore[arg-type]
        regularization=f.number("regularization"),
        regularization_terms=f.count("regularization_terms"),
    )


def _read_batch(f: Fields) -> BatchInfo:
    return BatchInfo(
        source=f.choice("source", ("file", "synthetic")),  # type: ignore[arg-type]
        size=f.count("size"),
        path=f.optional_text("path"),
        seed=f.optional_int("seed"),
        has_targets=f.flag("has_targets"),
        keys=f.texts("keys"),
    )


def _read_model(f: Fields) -> ModelInfo:
    return ModelInfo(
        name=f.text("name"),
        class_name=f.text("class"),
        path=f.optional_text("path"),
        format=f.text("format"),
        trainable_params=f.count("trainable_params"),
        layers=f.count("layers"),
        notes=f.texts("notes") if f.has("notes") else (),
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
    from .health import read_health

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


_MOVED = frozenset({"HESSIAN_SCHEMA", "CrossBlock", "Density", "HessianBlock", "HessianReport"})
"""The hessian report types, which live in :mod:`gradscope.commands.hessian.report`."""


def __getattr__(name: str) -> Any:
    """The hessian report types, from their own module (imported on first use: that
    module imports this one).  ``gradscope.report`` stays public, so no warning."""
    if name in _MOVED:
        from .commands.hessian import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
