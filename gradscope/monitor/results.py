"""What the training instruments measure, as plain data (schema ``gradscope.monitor/1``).

One frozen dataclass per instrument, each with ``to_dict`` (the JSON object of
``docs/monitor_schema.md``; non-finite numbers become ``null``) and ``from_dict`` (its
exact inverse, with the one-line errors of :class:`~gradscope._reading.Fields`).  No
TensorFlow here: ``gradscope dashboard`` reads these without importing it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .._reading import Fields
from ..report import finite_or_none

__all__ = [
    "INSTRUMENTS",
    "INSTRUMENT_TYPES",
    "PRESETS",
    "Alignment",
    "BatchTests",
    "InstrumentName",
    "Instruments",
    "LayerAlignment",
    "LayerUpdate",
    "Sharpness",
    "TraceStat",
    "UpdateSizes",
]

InstrumentName = Literal["update", "alignment", "batch_tests", "sharpness", "trace"]

INSTRUMENTS: tuple[InstrumentName, ...] = (
    "update",
    "alignment",
    "batch_tests",
    "sharpness",
    "trace",
)
"""Every instrument, in the order records list them."""

PRESETS: dict[str, tuple[InstrumentName, ...]] = {
    "economy": ("update", "alignment", "batch_tests"),
    "business": ("update", "alignment", "batch_tests", "trace"),
    "full": ("update", "alignment", "batch_tests", "trace", "sharpness"),
}
"""Named sets of instruments, cheapest first (their costs are in the README)."""


@dataclass(frozen=True)
class LayerUpdate:
    """The last update of one layer's trainable variables (or of all: ``total``)."""

    name: str
    norm: float
    """``||dw||``."""
    ratio: float
    """``||dw|| / ||w_before||`` (NaN when ``||w_before|| = 0``)."""
    distance: float
    """``||w - w0||``: how far the weights are from where the first ``fit`` began."""
    weight_norm: float
    """``||w||`` now."""

    def to_dict(self, with_name: bool = True) -> dict[str, Any]:
        values = {
            "norm": finite_or_none(self.norm),
            "ratio": finite_or_none(self.ratio),
            "distance": finite_or_none(self.distance),
            "weight_norm": finite_or_none(self.weight_norm),
        }
        return {"name": self.name, **values} if with_name else values

    @classmethod
    def from_fields(cls, fields: Fields, name: str | None = None) -> LayerUpdate:
        return cls(
            name=fields.text("name") if name is None else name,
            norm=fields.number("norm", norm=True),
            ratio=fields.number("ratio", norm=True),
            distance=fields.number("distance", norm=True),
            weight_norm=fields.number("weight_norm", norm=True),
        )


@dataclass(frozen=True)
class UpdateSizes:
    """Instrument ``update``: ``dw = w(now) - w(before)`` over ``steps`` optimizer steps."""

    steps: int
    total: LayerUpdate
    layers: tuple[LayerUpdate, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "total": self.total.to_dict(with_name=False),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> UpdateSizes:
        return cls(
            steps=fields.count("steps"),
            total=LayerUpdate.from_fields(fields.object("total"), name="total"),
            layers=tuple(LayerUpdate.from_fields(f) for f in fields.objects("layers")),
        )


@dataclass(frozen=True)
class LayerAlignment:
    """``cos(g, dw)`` of one layer."""

    name: str
    cosine: float


@dataclass(frozen=True)
class Alignment:
    """Instrument ``alignment``: the cosine between the probe gradient and the update."""

    total: float
    layers: tuple[LayerAlignment, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": finite_or_none(self.total),
            "layers": [
                {"name": layer.name, "cosine": finite_or_none(layer.cosine)}
                for layer in self.layers
            ],
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> Alignment:
        return cls(
            total=fields.number("total"),
            layers=tuple(
                LayerAlignment(f.text("name"), f.number("cosine")) for f in fields.objects("layers")
            ),
        )


SUGGESTION_KEYS = ("norm", "inner_product", "orthogonality")


@dataclass(frozen=True)
class BatchTests:
    """Instrument ``batch_tests``: is the batch large enough (see the schema document)."""

    batch_size: int
    theta: float
    nu: float
    gradient_norm: float
    norm_test: float
    inner_product_test: float
    orthogonality_test: float
    suggested_batch_size: dict[str, int | None] = field(default_factory=dict)
    snr: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "theta": self.theta,
            "nu": self.nu,
            "gradient_norm": finite_or_none(self.gradient_norm),
            "norm_test": finite_or_none(self.norm_test),
            "inner_product_test": finite_or_none(self.inner_product_test),
            "orthogonality_test": finite_or_none(self.orthogonality_test),
            "suggested_batch_size": {
                key: self.suggested_batch_size.get(key) for key in SUGGESTION_KEYS
            },
            "snr": finite_or_none(self.snr),
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> BatchTests:
        suggested = fields.object("suggested_batch_size")
        return cls(
            batch_size=fields.count("batch_size"),
            theta=fields.number("theta", norm=True),
            nu=fields.number("nu", norm=True),
            gradient_norm=fields.number("gradient_norm", norm=True),
            norm_test=fields.number("norm_test", norm=True),
            inner_product_test=fields.number("inner_product_test", norm=True),
            orthogonality_test=fields.number("orthogonality_test", norm=True),
            suggested_batch_size={key: suggested.optional_int(key) for key in SUGGESTION_KEYS},
            snr=fields.number("snr", norm=True),
        )


@dataclass(frozen=True)
class Sharpness:
    """Instrument ``sharpness``: the top Hessian eigenvalue against ``2 / lr``."""

    lambda_max: float
    two_over_lr: float
    eos_ratio: float
    matvecs: int
    residual: float
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "lambda_max": finite_or_none(self.lambda_max),
            "two_over_lr": finite_or_none(self.two_over_lr),
            "eos_ratio": finite_or_none(self.eos_ratio),
            "matvecs": self.matvecs,
            "residual": finite_or_none(self.residual),
            "converged": self.converged,
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> Sharpness:
        return cls(
            lambda_max=fields.number("lambda_max"),
            two_over_lr=fields.number("two_over_lr"),
            eos_ratio=fields.number("eos_ratio"),
            matvecs=fields.count("matvecs"),
            residual=fields.number("residual", norm=True),
            converged=fields.flag("converged"),
        )


@dataclass(frozen=True)
class TraceStat:
    """Instrument ``trace``: Hutch++'s estimate of the curvature matrix's trace."""

    trace: float
    stderr: float
    probes: int
    matrix: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace": finite_or_none(self.trace),
            "stderr": finite_or_none(self.stderr),
            "probes": self.probes,
            "matrix": self.matrix,
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> TraceStat:
        return cls(
            trace=fields.number("trace"),
            stderr=fields.number("stderr", norm=True),
            probes=fields.count("probes"),
            matrix=fields.choice("matrix", ("hessian", "ggn")),
        )


INSTRUMENT_TYPES: dict[str, Any] = {
    "update": UpdateSizes,
    "alignment": Alignment,
    "batch_tests": BatchTests,
    "sharpness": Sharpness,
    "trace": TraceStat,
}
"""Each instrument's result type (all read with ``from_fields``)."""


@dataclass(frozen=True)
class Instruments:
    """One record's instruments: ``asked`` names those asked for; an attribute is
    ``None`` when not asked for or without a value at this record."""

    asked: tuple[InstrumentName, ...] = ()
    update: UpdateSizes | None = None
    alignment: Alignment | None = None
    batch_tests: BatchTests | None = None
    sharpness: Sharpness | None = None
    trace: TraceStat | None = None

    def to_dict(self) -> dict[str, Any]:
        """One key per instrument asked for, ``null`` when it has no value."""
        out: dict[str, Any] = {}
        for name in self.asked:
            value = getattr(self, name)
            out[name] = None if value is None else value.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "record") -> Instruments:
        return cls.from_fields(Fields(data, source, "instruments"))

    @classmethod
    def from_fields(cls, fields: Fields) -> Instruments:
        unknown = [key for key in fields.data if key not in INSTRUMENT_TYPES]
        if unknown:
            fields.fail(unknown[0], f"one of {', '.join(INSTRUMENTS)}", "an unknown instrument")
        values = {}
        for name in fields.data:
            inner = fields.optional_object(name)
            values[name] = None if inner is None else INSTRUMENT_TYPES[name].from_fields(inner)
        asked = tuple(name for name in INSTRUMENTS if name in fields.data)
        return cls(asked=asked, **values)

    def scalars(self) -> dict[str, float]:
        """Flat ``tag -> value`` scalars for TensorBoard, grouped by instrument
        (``update/ratio/<layer>``, ``sharpness/eos_ratio``, ...); NaN left out."""
        out: dict[str, float] = {}
        if self.update is not None:
            for key in ("norm", "ratio", "distance"):
                out[f"update/{key}"] = getattr(self.update.total, key)
            for layer in self.update.layers:
                out[f"update_ratio/{layer.name}"] = layer.ratio
                out[f"update_norm/{layer.name}"] = layer.norm
                out[f"distance/{layer.name}"] = layer.distance
        if self.alignment is not None:
            out["alignment/total"] = self.alignment.total
            for item in self.alignment.layers:
                out[f"alignment/{item.name}"] = item.cosine
        if self.batch_tests is not None:
            tests = self.batch_tests
            for key in ("norm_test", "inner_product_test", "orthogonality_test", "snr"):
                out[f"batch_tests/{key}"] = getattr(tests, key)
            for key, size in tests.suggested_batch_size.items():
                if size is not None:
                    out[f"batch_tests/suggested_{key}"] = float(size)
        if self.sharpness is not None:
            for key in ("lambda_max", "two_over_lr", "eos_ratio"):
                out[f"sharpness/{key}"] = getattr(self.sharpness, key)
        if self.trace is not None:
            out[f"trace/{self.trace.matrix}"] = self.trace.trace
        return {tag: value for tag, value in out.items() if math.isfinite(value)}


def resolve_instruments(
    instruments: str | InstrumentName | tuple[str, ...] | list[str] | None,
) -> tuple[InstrumentName, ...]:
    """Instrument names from a preset name, a comma list or a sequence of names
    (presets allowed inside); in :data:`INSTRUMENTS` order, without repeats.  Raises
    :class:`ValueError` naming the unknown entry."""
    if instruments is None:
        return ()
    items = instruments.split(",") if isinstance(instruments, str) else list(instruments)
    chosen: set[str] = set()
    names = ", ".join([*INSTRUMENTS, *PRESETS])
    for raw in items:
        item = str(raw).strip()
        if not item:
            continue
        if item in PRESETS:
            chosen.update(PRESETS[item])
        elif item in INSTRUMENTS:
            chosen.add(item)
        else:
            raise ValueError(f"unknown instrument {item!r}; expected one of {names}")
    return tuple(name for name in INSTRUMENTS if name in chosen)
