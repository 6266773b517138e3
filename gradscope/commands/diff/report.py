"""What ``gradscope diff`` found, as plain data: :class:`DiffReport` (schema
``gradscope.diff/1``) and the rows it is made of.

Every ratio is ``B / A`` of two non-negative norms.  When it does not exist (a zero or a
missing/non-finite norm) the JSON holds ``null`` and a ``reason`` code (see
:data:`REASONS`), never NaN or Infinity, so the output stays valid JSON.
:meth:`DiffReport.to_dict` is the structure of schema ``gradscope.diff/1``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from gradscope.render import renders_with
from gradscope.report import finite_or_none

__all__ = [
    "DIFF_SCHEMA",
    "INFINITE_REASONS",
    "REASONS",
    "ActivationDiff",
    "Change",
    "CheckResult",
    "Checks",
    "DiffReport",
    "LossChange",
    "NonfiniteChange",
    "Presence",
    "ReportSide",
    "TensorKind",
    "TopChange",
    "VariableDiff",
]

DIFF_SCHEMA = "gradscope.diff/1"

TensorKind = Literal["variable", "activation", "input"]

REASONS: dict[str, str] = {
    "nonfinite_a": "non-finite in A",
    "nonfinite_b": "non-finite in B",
    "nonfinite_both": "non-finite in A and B",
    "missing_a": "no value in A",
    "missing_b": "no value in B",
    "missing_both": "no value in A or B",
    "zero_a": "0 in A: infinite ratio",
    "zero_b": "0 in B: ratio 0",
    "zero_both": "0 in A and B: ratio undefined",
    "overflow": "ratio beyond the float range",
}
"""Why a ratio (or its log10) is ``null``: the code in the JSON and its meaning."""

INFINITE_REASONS = frozenset({"zero_a", "zero_b", "overflow"})
"""Reasons of a change by an infinite factor (``|log10 ratio|`` is infinite)."""


@dataclass(frozen=True)
class Change:
    """One norm in A and in B, the factor ``ratio = b / a`` and ``log10_ratio``.

    ``reason`` (a :data:`REASONS` code) is set whenever ``ratio`` or ``log10_ratio`` is
    ``None``: a zero or a missing value on either side.  With ``zero_b`` the ratio is 0
    and only its log10 is missing; with ``overflow`` only the ratio is.
    """

    a: float | None
    b: float | None
    ratio: float | None
    log10_ratio: float | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": finite_or_none(self.a),
            "b": finite_or_none(self.b),
            "ratio": finite_or_none(self.ratio),
            "log10_ratio": finite_or_none(self.log10_ratio),
            "reason": self.reason,
        }

    @property
    def magnitude(self) -> float:
        """``|log10 ratio|``: infinite for a change from or to zero, 0 when undefined."""
        if self.log10_ratio is not None:
            return abs(self.log10_ratio)
        return math.inf if self.reason in INFINITE_REASONS else 0.0

    def beyond(self, factor: float) -> bool:
        """Whether the value moved by more than ``factor`` (>= 1) up or down."""
        if self.reason in INFINITE_REASONS:
            return True
        if self.ratio is None:
            return False
        return self.ratio > factor or self.ratio * factor < 1.0


@dataclass(frozen=True)
class LossChange:
    """The loss in A and in B and ``delta = b - a`` (a loss may be negative: no ratio)."""

    a: float | None
    b: float | None
    delta: float | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": finite_or_none(self.a),
            "b": finite_or_none(self.b),
            "delta": finite_or_none(self.delta),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ReportSide:
    """What one of the two reports describes: its file, model, batch, loss and mode."""

    file: str | None
    model: str
    model_path: str | None
    batch_source: str
    batch_path: str | None
    batch_size: int | None
    batch_seed: int | None
    loss_source: str
    training: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "model": self.model,
            "model_path": self.model_path,
            "batch_source": self.batch_source,
            "batch_path": self.batch_path,
            "batch_size": self.batch_size,
            "batch_seed": self.batch_seed,
            "loss_source": self.loss_source,
            "training": self.training,
        }


@dataclass(frozen=True)
class VariableDiff:
    """One trainable variable present in both reports (``path`` as in the inspect JSON).

    ``shape`` is B's; ``note`` says when A's differs.
    """

    path: str
    layer: str
    layer_class: str
    shape: tuple[int, ...]
    grad_l2: Change
    weight_l2: Change
    grad_weight_ratio: Change
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "layer": self.layer,
            "class": self.layer_class,
            "shape": list(self.shape),
            "grad_l2": self.grad_l2.to_dict(),
            "weight_l2": self.weight_l2.to_dict(),
            "grad_weight_ratio": self.grad_weight_ratio.to_dict(),
            "note": self.note,
        }


@dataclass(frozen=True)
class ActivationDiff:
    """One layer output present in both reports: its gradient norm and its own norm."""

    path: str
    layer_class: str
    shape: tuple[int, ...]
    grad_l2: Change
    value_l2: Change
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "class": self.layer_class,
            "shape": list(self.shape),
            "grad_l2": self.grad_l2.to_dict(),
            "value_l2": self.value_l2.to_dict(),
            "note": self.note,
        }


@dataclass(frozen=True)
class Presence:
    """A tensor found in only one of the reports (``added``: only in B)."""

    kind: TensorKind
    path: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}


@dataclass(frozen=True)
class NonfiniteChange:
    """A tensor whose non-finite count went from 0 to more (or back): the two counts.

    ``a`` is ``None`` for a tensor only in B, or without a gradient in A.
    """

    kind: TensorKind
    path: str
    quantity: Literal["grad", "value"]
    a: int | None
    b: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "quantity": self.quantity,
            "a": self.a,
            "b": self.b,
        }


@dataclass(frozen=True)
class TopChange:
    """One of the largest changes by ``|log10 ratio|``, across variables and layers."""

    kind: TensorKind
    path: str
    quantity: str
    change: Change

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "quantity": self.quantity,
            **self.change.to_dict(),
        }


@dataclass(frozen=True)
class CheckResult:
    """One ``--fail-on`` condition: asked for or not, whether it fired, and on what."""

    condition: str
    requested: bool
    triggered: bool
    paths: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "condition": self.condition,
            "requested": self.requested,
            "triggered": self.triggered,
            "paths": list(self.paths),
        }


@dataclass(frozen=True)
class Checks:
    """All conditions, evaluated whether requested or not; ``failed`` if a requested one
    fired (the CLI then exits with code 1)."""

    fail_on: tuple[str, ...]
    max_ratio: float
    results: tuple[CheckResult, ...]

    @property
    def failed(self) -> bool:
        return any(r.requested and r.triggered for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fail_on": list(self.fail_on),
            "max_ratio": finite_or_none(self.max_ratio),
            "failed": self.failed,
            "results": [r.to_dict() for r in self.results],
        }


@renders_with("gradscope.commands.diff.render")
@dataclass(frozen=True)
class DiffReport:
    """Everything ``gradscope diff`` found, as plain data (schema ``gradscope.diff/1``)."""

    a: ReportSide
    b: ReportSide
    notes: tuple[str, ...]
    global_grad_norm: Change
    loss: LossChange
    variables: tuple[VariableDiff, ...]
    activations: tuple[ActivationDiff, ...]
    added: tuple[Presence, ...]
    removed: tuple[Presence, ...]
    nonfinite_new: tuple[NonfiniteChange, ...]
    nonfinite_recovered: tuple[NonfiniteChange, ...]
    top: tuple[TopChange, ...]
    checks: Checks
    schema: str = DIFF_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure of schema ``gradscope.diff/1`` (see the README)."""
        return {
            "schema": self.schema,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "notes": list(self.notes),
            "global_grad_norm": self.global_grad_norm.to_dict(),
            "loss": self.loss.to_dict(),
            "variables": [row.to_dict() for row in self.variables],
            "activations": [row.to_dict() for row in self.activations],
            "added": [row.to_dict() for row in self.added],
            "removed": [row.to_dict() for row in self.removed],
            "nonfinite": {
                "new": [row.to_dict() for row in self.nonfinite_new],
                "recovered": [row.to_dict() for row in self.nonfinite_recovered],
            },
            "top": [row.to_dict() for row in self.top],
            "checks": self.checks.to_dict(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text; ``allow_nan=False`` guarantees valid JSON."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)
