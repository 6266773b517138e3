"""The pieces every report shares, and the public home of every report type's name.

Reports hold only Python scalars, tuples and (optionally) numpy arrays, never
TensorFlow or rich objects, so they can be pickled by the caller, compared in tests and
rendered by any renderer.  Here: :class:`ModelInfo`, :class:`BatchInfo`,
:class:`LossInfo`, :class:`TensorStats`, :func:`finite_or_none` and the JSON mixin.
Each command's report types live with the command (``inspect``'s :class:`Report` in
:mod:`gradscope.commands.inspect.report`, ``hessian``'s in
:mod:`gradscope.commands.hessian.report`); this module still exports their names.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._reading import ABSENT, Fields, Found

if TYPE_CHECKING:
    from .commands.hessian.report import HESSIAN_SCHEMA as HESSIAN_SCHEMA
    from .commands.hessian.report import CrossBlock as CrossBlock
    from .commands.hessian.report import Density as Density
    from .commands.hessian.report import HessianBlock as HessianBlock
    from .commands.hessian.report import HessianReport as HessianReport
    from .commands.inspect.report import SCHEMA as SCHEMA
    from .commands.inspect.report import ActivationRow as ActivationRow
    from .commands.inspect.report import BatchesReport as BatchesReport
    from .commands.inspect.report import GradientTensors as GradientTensors
    from .commands.inspect.report import InputRow as InputRow
    from .commands.inspect.report import NormSpread as NormSpread
    from .commands.inspect.report import PerSampleReport as PerSampleReport
    from .commands.inspect.report import PerSampleRow as PerSampleRow
    from .commands.inspect.report import Report as Report
    from .commands.inspect.report import VariableRow as VariableRow
    from .commands.inspect.report import VariableSpread as VariableSpread
    from .commands.landscape.report import LANDSCAPE_SCHEMA as LANDSCAPE_SCHEMA
    from .commands.landscape.report import LandscapeReport as LandscapeReport


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
    return math.prod(int(d) for d in shape)


def _stats_dict(stats: TensorStats | None) -> dict[str, Any] | None:
    return None if stats is None else stats.to_dict()


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


_INSPECT = (
    "SCHEMA",
    "ActivationRow",
    "BatchesReport",
    "GradientTensors",
    "InputRow",
    "NormSpread",
    "PerSampleReport",
    "PerSampleRow",
    "Report",
    "VariableRow",
    "VariableSpread",
)
_HESSIAN = ("HESSIAN_SCHEMA", "CrossBlock", "Density", "HessianBlock", "HessianReport")
_LANDSCAPE = ("LANDSCAPE_SCHEMA", "LandscapeReport")
_MOVED = {
    **dict.fromkeys(_INSPECT, "gradscope.commands.inspect.report"),
    **dict.fromkeys(_HESSIAN, "gradscope.commands.hessian.report"),
    **dict.fromkeys(_LANDSCAPE, "gradscope.commands.landscape.report"),
}
"""Report types that live with their command, by name: their modules import this one,
so they are read on first use.  ``gradscope.report`` stays public: no warning."""


def __getattr__(name: str) -> Any:
    """A command's report type, from its own module."""
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
