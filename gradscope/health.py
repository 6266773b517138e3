"""Diagnoses of an inspect report: non-finite values, vanishing and exploding gradients,
dead units, stalled layers.

Every finding names the layers or variables involved, its numbers and the threshold it
crossed.  Gradients are judged **per layer** (the L2 norm over the layer's variables,
against the layer's own weights and against the other layers), never per lone variable:
some parameters get a zero gradient by construction (the key bias of attention, to which
softmax is invariant; a bias under a BatchNormalization), and they must not raise alarms
when their layer learns.  Layers without any connected gradient (their output does not
reach the loss) are left out: that is a fact about the graph, reported in the rows.

Everything here reads the plain-data :class:`~gradscope.report.Report`; nothing is
recomputed, so the same diagnoses can be run on a report loaded back from JSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from . import validation
from ._reading import Fields
from .report import TensorStats, finite_or_none

if TYPE_CHECKING:  # the report imports the inspect options, which import this module
    from .commands.inspect.report import ActivationRow, Report, VariableRow

Kind = Literal["nonfinite", "vanishing", "exploding", "dead", "stalled"]
KINDS: tuple[Kind, ...] = ("nonfinite", "vanishing", "exploding", "dead", "stalled")

RELU_FAMILY = frozenset({"relu", "relu6", "ReLU"})
"""Activations whose units can die: exactly zero for every input below a threshold."""

NEAR_ZERO_RMS = 1e-4
"""Weights whose root-mean-square is below this are near zero by initialization (no usual
initializer goes this low): they are left out of the ``exploding`` ratio check."""


@dataclass(frozen=True)
class Thresholds:
    """When each diagnosis fires (the defaults are documented in the README).

    * ``vanishing_ratio``: a layer's gradient norm below this fraction of the largest
      layer gradient norm (1e-4: four orders of magnitude).
    * ``exploding_norm``: the global gradient norm above this.
    * ``exploding_ratio``: a layer's ``||g|| / ||w||`` above this: one SGD step at
      learning rate 0.1 would move the weights by more than their own norm.
    * ``dead_fraction``: a ReLU-family output with more than this fraction of units
      zero for the whole batch.
    * ``stalled_ratio``: a layer's ``||g|| / ||w||`` below this: its weights barely move.
    """

    vanishing_ratio: float = 1e-4
    exploding_norm: float = 1e3
    exploding_ratio: float = 10.0
    dead_fraction: float = 0.5
    stalled_ratio: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("vanishing_ratio", "exploding_norm", "exploding_ratio", "stalled_ratio"):
            validation.positive_number(name, getattr(self, name))
        validation.fraction("dead_fraction", self.dead_fraction)

    def to_dict(self) -> dict[str, float]:
        return {
            "vanishing_ratio": self.vanishing_ratio,
            "exploding_norm": self.exploding_norm,
            "exploding_ratio": self.exploding_ratio,
            "dead_fraction": self.dead_fraction,
            "stalled_ratio": self.stalled_ratio,
        }


@dataclass(frozen=True)
class Finding:
    """One diagnosis: its kind, a one-line message, where, its numbers and threshold."""

    kind: Kind
    message: str
    where: tuple[str, ...]
    values: dict[str, float | int | None] = field(default_factory=dict)
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "where": list(self.where),
            "values": {
                k: v if isinstance(v, int) or v is None else finite_or_none(v)
                for k, v in self.values.items()
            },
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class Health:
    """The ``health`` section: the findings, in the order of :data:`KINDS`."""

    findings: tuple[Finding, ...]
    thresholds: Thresholds

    def kinds(self) -> set[str]:
        return {finding.kind for finding in self.findings}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.findings,
            "findings": [finding.to_dict() for finding in self.findings],
            "thresholds": self.thresholds.to_dict(),
        }


def read_health(f: Fields) -> Health:
    """The :class:`Health` whose ``to_dict()`` ``f`` holds (``ok`` is derived, not read)."""
    t = f.object("thresholds")
    thresholds = Thresholds(**{name: t.number(name) for name in Thresholds.__dataclass_fields__})
    return Health(tuple(_read_finding(row) for row in f.objects("findings")), thresholds)


def _read_finding(f: Fields) -> Finding:
    values = f.object("values")
    return Finding(
        kind=f.choice("kind", KINDS),  # type: ignore[arg-type]
        message=f.text("message"),
        where=f.texts("where"),
        values={key: _finding_value(values, key) for key in values.data},
        threshold=f.optional_number("threshold"),
    )


def _finding_value(f: Fields, key: str) -> float | int | None:
    """A finding's number: an integer stays one (a count), ``null`` stays ``None``."""
    value = f.get(key)
    return (
        value if isinstance(value, int) and not isinstance(value, bool) else f.optional_number(key)
    )


@dataclass(frozen=True)
class LayerNorm:
    """A layer's variables, folded: gradient and weight norms over all of them."""

    path: str
    grad_l2: float
    weight_l2: float
    size: int = 1

    @property
    def ratio(self) -> float | None:
        return self.grad_l2 / self.weight_l2 if self.weight_l2 > 0 else None

    @property
    def near_zero(self) -> bool:
        """Weights near zero by design (LayerScale's 1e-6, zero-initialized gates): their
        ``||g|| / ||w||`` is huge without saying anything about the gradient."""
        return self.weight_l2 / math.sqrt(max(self.size, 1)) < NEAR_ZERO_RMS


def parse_fail_on(text: str | None) -> tuple[Kind, ...]:
    """``"nonfinite,vanishing"`` as kinds; unknown names raise ``ValueError``."""
    if not text:
        return ()
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in KINDS]
    if unknown:
        raise ValueError(f"unknown {unknown}; expected a comma-separated subset of {list(KINDS)}")
    return tuple(kind for kind in KINDS if kind in names)


def _quadrature(values: Iterable[float]) -> float:
    return math.sqrt(sum(v * v for v in values))


def layer_norms(variables: Sequence[VariableRow]) -> list[LayerNorm]:
    """Per layer, in forward order: norms over its variables with a finite gradient."""
    grouped: dict[str, list[VariableRow]] = {}
    for row in variables:
        if row.grad is not None and math.isfinite(row.grad.l2):
            grouped.setdefault(row.layer, []).append(row)
    return [
        LayerNorm(
            path,
            _quadrature(r.grad.l2 for r in rows if r.grad is not None),
            _quadrature(r.weight_l2 for r in rows if math.isfinite(r.weight_l2)),
            sum(math.prod(r.shape) for r in rows),
        )
        for path, rows in grouped.items()
    ]


def _nonfinite(stats: TensorStats | None) -> int:
    return 0 if stats is None else int(stats.nonfinite)


def _nonfinite_findings(report: Report) -> list[Finding]:
    """Where NaN/Inf first appear: forward order for outputs, backward for gradients."""
    findings: list[Finding] = []
    if not math.isfinite(report.loss.value):
        findings.append(
            Finding("nonfinite", f"the loss is {report.loss.value}", ("loss",), {"loss": None})
        )
    bad_weights = [r for r in report.variables if not math.isfinite(r.weight_l2)]
    if bad_weights:
        findings.append(
            Finding(
                "nonfinite",
                f"weights hold NaN/Inf: {_listing(r.path for r in bad_weights)}",
                tuple(r.path for r in bad_weights),
                {"variables": len(bad_weights)},
            )
        )
    outputs = [r for r in report.activations if _nonfinite(r.value)]
    if outputs:
        first = outputs[0]
        findings.append(
            Finding(
                "nonfinite",
                f"layer outputs hold NaN/Inf, first in forward order at {first.path} "
                f"({_nonfinite(first.value)} values); {len(outputs)} outputs in all",
                tuple(r.path for r in outputs),
                {"first_count": _nonfinite(first.value), "outputs": len(outputs)},
            )
        )
    findings.extend(_nonfinite_gradients(report))
    return findings


def _nonfinite_gradients(report: Report) -> list[Finding]:
    """Gradients flow backward: the first bad one is the last in forward order."""
    rows: list[VariableRow | ActivationRow] = [
        *[r for r in report.activations if _nonfinite(r.grad)],
        *[r for r in report.variables if _nonfinite(r.grad)],
    ]
    if not rows:
        return []
    outputs = [r for r in report.activations if _nonfinite(r.grad)]
    variables = [r for r in report.variables if _nonfinite(r.grad)]
    first = outputs[-1] if outputs else variables[-1]
    total = sum(_nonfinite(r.grad) for r in rows)
    return [
        Finding(
            "nonfinite",
            f"gradients hold NaN/Inf, first in backward order at {first.path} "
            f"({_nonfinite(first.grad)} values); {len(variables)} variables and "
            f"{len(outputs)} layer outputs affected, {total} values in all",
            tuple(r.path for r in rows),
            {"first_count": _nonfinite(first.grad), "values": total},
        )
    ]


def _vanishing(layers: Sequence[LayerNorm], limit: float) -> list[Finding]:
    largest = max((layer.grad_l2 for layer in layers), default=0.0)
    if largest <= 0:
        return []
    low = [layer for layer in layers if layer.grad_l2 < limit * largest]
    if not low:
        return []
    first = low[0]
    return [
        Finding(
            "vanishing",
            f"{len(low)} of {len(layers)} layers have a gradient norm below {limit:g} x the "
            f"largest ({largest:.3e}); first from the input side: {first.path} "
            f"({first.grad_l2:.3e}, {first.grad_l2 / largest:.1e} of the largest)",
            tuple(layer.path for layer in low),
            {"first_grad_l2": first.grad_l2, "largest_grad_l2": largest, "layers": len(low)},
            limit,
        )
    ]


def _exploding(report: Report, layers: Sequence[LayerNorm], t: Thresholds) -> list[Finding]:
    findings = []
    norm = report.global_grad_norm
    if math.isfinite(norm) and norm > t.exploding_norm:
        findings.append(
            Finding(
                "exploding",
                f"the global gradient norm {norm:.3e} is above {t.exploding_norm:g}",
                ("global",),
                {"global_grad_norm": norm},
                t.exploding_norm,
            )
        )
    sized = [layer for layer in layers if not layer.near_zero]
    findings.extend(_ratio_outliers("exploding", sized, t.exploding_ratio, above=True))
    return findings


def _dead(report: Report, limit: float) -> list[Finding]:
    dead = [
        r
        for r in report.activations
        if r.activation in RELU_FAMILY
        and r.value is not None
        and r.value.dead_frac is not None
        and r.value.dead_frac > limit
    ]
    return [
        Finding(
            "dead",
            f"{r.path} ({r.activation}): {r.value.dead_frac:.1%} of its units are zero for "
            f"the whole batch, above {limit:.0%}",
            (r.path,),
            {"dead_frac": r.value.dead_frac},
            limit,
        )
        for r in dead
        if r.value is not None and r.value.dead_frac is not None
    ]


def _ratio_outliers(
    kind: Kind, layers: Sequence[LayerNorm], limit: float, *, above: bool
) -> list[Finding]:
    """Layers whose ``||g|| / ||w||`` is above (or below) ``limit``, as one finding."""
    hit = [
        layer
        for layer in layers
        if layer.ratio is not None and (layer.ratio > limit if above else layer.ratio < limit)
    ]
    if not hit:
        return []
    extreme = "largest" if above else "lowest"
    worst = (max if above else min)(hit, key=lambda layer: layer.ratio or 0.0)
    return [
        Finding(
            kind,
            f"{len(hit)} layers have ||g||/||w|| {'above' if above else 'below'} {limit:g}: "
            f"{_listing(layer.path for layer in hit)}; the {extreme}: {worst.path} "
            f"({worst.ratio:.3e})",
            tuple(layer.path for layer in hit),
            {f"{extreme}_ratio": worst.ratio, "layers": len(hit)},
            limit,
        )
    ]


def _listing(paths: Iterable[str], most: int = 4) -> str:
    items = list(paths)
    shown = ", ".join(items[:most])
    return shown if len(items) <= most else f"{shown}, ... ({len(items)} in all)"


def diagnose(report: Report, thresholds: Thresholds | None = None) -> Health:
    """Every diagnosis of ``report`` under ``thresholds`` (the defaults when ``None``)."""
    t = thresholds or Thresholds()
    layers = layer_norms(report.variables)
    findings = [
        *_nonfinite_findings(report),
        *_vanishing(layers, t.vanishing_ratio),
        *_exploding(report, layers, t),
        *_dead(report, t.dead_fraction),
        *_ratio_outliers("stalled", layers, t.stalled_ratio, above=False),
    ]
    return Health(tuple(findings), t)
