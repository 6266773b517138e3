"""Series over training steps, extracted from a :class:`~.reader.MonitorRun`.

Every series is a list of ``(fit.step, value)`` points, one per record that has the
value (an instrument that is absent or ``null`` at a record adds no point); a ``null``
number inside a record (not finite, or not defined there) is a NaN point.

* run-wide series (:func:`run_series`): every ``logs`` key, the probe loss
  (``report.loss.value``), the global gradient norm, the learning rate, and each
  instrument's numbers (update ``total``, alignment ``total``, sharpness ``lambda_max``,
  ``two_over_lr`` and ``eos_ratio``, the three batch tests and the SNR, the trace);
* per-layer series (:func:`layer_grad_norms`, :func:`layer_update_ratios`): the gradient
  norm of each layer (L2 over its variables' ``grad.l2``, grouped by ``layer``) and its
  update ratio ``‖Δw‖/‖w‖``;
* health events (:func:`health_events`): ``(step, kind, target)`` of every finding.

:func:`top_movers` picks the layers whose series changed most (``|log10(last/first)|``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ...monitor.results import Alignment, BatchTests, Sharpness, TraceStat, UpdateSizes
from ...report import finite_or_none
from .reader import Instrument, MonitorRecord, MonitorRun, ProbeReport

Scale = Literal["linear", "log"]


@dataclass(frozen=True)
class Series:
    """One quantity over training: ``values[i]`` at optimizer step ``steps[i]``.

    ``key`` names it in the JSON (``sharpness.lambda_max``, ``layer grad_norm``'s layer
    path), ``label`` in the table; ``scale`` says whether its trend reads in log10
    (norms, ratios, tests) or linearly (loss, cosines).  NaN marks a value that was
    ``null`` in the file (not finite, or not defined at that record).
    """

    key: str
    label: str
    instrument: str
    scale: Scale
    steps: tuple[int, ...]
    values: tuple[float, ...]

    def finite(self) -> list[float]:
        """The finite values, in order."""
        return [v for v in self.values if math.isfinite(v)]

    def first(self) -> float | None:
        """The first finite value (``None``: none)."""
        values = self.finite()
        return values[0] if values else None

    def last(self) -> float | None:
        """The last finite value (``None``: none)."""
        values = self.finite()
        return values[-1] if values else None

    def minimum(self) -> float | None:
        values = self.finite()
        return min(values) if values else None

    def maximum(self) -> float | None:
        values = self.finite()
        return max(values) if values else None

    def nonfinite(self) -> int:
        """How many points are NaN (``null`` in the file)."""
        return sum(1 for v in self.values if not math.isfinite(v))

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "instrument": self.instrument,
            "scale": self.scale,
            "steps": list(self.steps),
            "values": [finite_or_none(v) for v in self.values],
            "nonfinite": self.nonfinite(),
        }


@dataclass(frozen=True)
class HealthEvent:
    """One health finding of a record's probe report, at its step."""

    step: int
    epoch: int
    kind: str
    target: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "kind": self.kind,
            "target": self.target,
            "message": self.message,
        }


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


Getter = Callable[[MonitorRecord], "float | _Absent | None"]


class _Absent:
    """A record without the value at all: no point (unlike ``None``, a NaN point)."""


ABSENT = _Absent()


def collect(
    run: MonitorRun, key: str, label: str, instrument: str, scale: Scale, get: Getter
) -> Series:
    """The series of ``get(record)`` over ``run``: no point where it is :data:`ABSENT`."""
    steps: list[int] = []
    values: list[float] = []
    for record in run.records:
        value = get(record)
        if isinstance(value, _Absent):
            continue
        steps.append(record.fit.step)
        values.append(_nan(value))
    return Series(key, label, instrument, scale, tuple(steps), tuple(values))


def _instrument_value(name: str, kind: type[Any], read: Callable[[Any], float | None]) -> Getter:
    def get(record: MonitorRecord) -> float | _Absent | None:
        values: Instrument | None = record.instrument(name)
        return read(values) if isinstance(values, kind) else ABSENT

    return get


_INSTRUMENT_SERIES: tuple[tuple[str, str, str, Scale, type[Any], Callable[[Any], Any]], ...] = (
    ("update.ratio", "‖Δw‖/‖w‖", "update", "log", UpdateSizes, lambda u: u.total.ratio),
    ("update.norm", "‖Δw‖", "update", "log", UpdateSizes, lambda u: u.total.norm),
    ("update.distance", "‖w − w₀‖", "update", "log", UpdateSizes, lambda u: u.total.distance),
    ("alignment.total", "cos(g, Δw)", "alignment", "linear", Alignment, lambda a: a.total),
    ("sharpness.lambda_max", "λmax", "sharpness", "log", Sharpness, lambda s: s.lambda_max),
    ("sharpness.two_over_lr", "2/lr", "sharpness", "log", Sharpness, lambda s: s.two_over_lr),
    (
        "sharpness.eos_ratio",
        "λmax·lr/2 (EoS)",
        "sharpness",
        "log",
        Sharpness,
        lambda s: s.eos_ratio,
    ),
    ("batch_tests.norm_test", "norm test", "batch_tests", "log", BatchTests, lambda b: b.norm_test),
    (
        "batch_tests.inner_product_test",
        "inner-product test",
        "batch_tests",
        "log",
        BatchTests,
        lambda b: b.inner_product_test,
    ),
    (
        "batch_tests.orthogonality_test",
        "orthogonality test",
        "batch_tests",
        "log",
        BatchTests,
        lambda b: b.orthogonality_test,
    ),
    ("batch_tests.snr", "gradient SNR", "batch_tests", "log", BatchTests, lambda b: b.snr),
    ("trace.trace", "trace", "trace", "linear", TraceStat, lambda t: t.trace),
)
"""The instruments' series: key, label, instrument, scale, value type, value."""


def _log_keys(run: MonitorRun) -> list[str]:
    """Every ``logs`` key of the run, in order of first appearance."""
    keys: dict[str, None] = {}
    for record in run.records:
        keys.update(dict.fromkeys(record.logs))
    return list(keys)


def _log_value(key: str) -> Getter:
    def get(record: MonitorRecord) -> float | _Absent | None:
        return record.logs.get(key, ABSENT)

    return get


def _report_value(read: Callable[[ProbeReport], float | None]) -> Getter:
    return lambda record: read(record.report)


def run_series(run: MonitorRun) -> tuple[Series, ...]:
    """The run-wide series; instruments that have no point in the run are left out."""
    series = [
        collect(run, f"logs.{key}", f"{key} (logs)", "logs", "linear", _log_value(key))
        for key in _log_keys(run)
    ]
    series.append(
        collect(run, "report.loss", "probe loss", "report", "linear", _report_value(_loss))
    )
    series.append(
        collect(
            run, "report.global_grad_norm", "‖g‖ (probe)", "report", "log", _report_value(_norm)
        )
    )
    rate = collect(run, "learning_rate", "learning rate", "fit", "log", lambda r: r.learning_rate)
    if rate.finite():
        series.append(rate)
    for key, label, name, scale, kind, read in _INSTRUMENT_SERIES:
        found = collect(run, key, label, name, scale, _instrument_value(name, kind, read))
        if found.steps:
            series.append(found)
    return tuple(series)


def _loss(report: ProbeReport) -> float | None:
    return report.loss


def _norm(report: ProbeReport) -> float | None:
    return report.global_grad_norm


def layer_norms(report: ProbeReport) -> dict[str, float]:
    """Each layer's gradient norm, ``sqrt(Σ grad.l2²)`` over its variables that have a
    gradient, in model order; NaN when one of them is not finite."""
    squares: dict[str, float] = {}
    for variable in report.variables:
        if not variable.has_grad:
            continue
        l2 = _nan(variable.grad_l2)
        squares[variable.layer] = squares.get(variable.layer, 0.0) + l2 * l2
    return {layer: math.sqrt(total) for layer, total in squares.items()}


def _by_layer(
    run: MonitorRun, pick: Callable[[MonitorRecord], dict[str, float] | None]
) -> dict[str, tuple[list[int], list[float]]]:
    points: dict[str, tuple[list[int], list[float]]] = {}
    for record in run.records:
        values = pick(record)
        for layer, value in (values or {}).items():
            steps, row = points.setdefault(layer, ([], []))
            steps.append(record.fit.step)
            row.append(value)
    return points


def _layer_series(
    points: dict[str, tuple[list[int], list[float]]], instrument: str
) -> tuple[Series, ...]:
    return tuple(
        Series(layer, layer, instrument, "log", tuple(steps), tuple(values))
        for layer, (steps, values) in points.items()
    )


def layer_grad_norms(run: MonitorRun) -> tuple[Series, ...]:
    """One series per layer: its gradient norm on the probe batch, layers in model order."""
    return _layer_series(_by_layer(run, lambda r: layer_norms(r.report)), "report")


def _update_ratios(record: MonitorRecord) -> dict[str, float] | None:
    update = record.instrument("update")
    if not isinstance(update, UpdateSizes):
        return None
    return {layer.name: _nan(layer.ratio) for layer in update.layers}


def layer_update_ratios(run: MonitorRun) -> tuple[Series, ...]:
    """One series per layer: its update ratio ``‖Δw‖/‖w‖`` (no series without ``update``)."""
    return _layer_series(_by_layer(run, _update_ratios), "update")


def health_events(run: MonitorRun) -> tuple[HealthEvent, ...]:
    """Every finding of every record's probe report, in file order."""
    return tuple(
        HealthEvent(r.fit.step, r.fit.epoch, f.kind, f.target, f.message)
        for r in run.records
        for f in r.report.findings
    )


def mover_score(series: Series) -> float:
    """How much a positive series moved: ``|log10(last / first)|`` over its finite
    positive values; ``inf`` when it has a non-finite point (those come first), 0 with
    fewer than two positive values."""
    if series.nonfinite():
        return math.inf
    positive = [v for v in series.values if v > 0]
    if len(positive) < 2:
        return 0.0
    return abs(math.log10(positive[-1]) - math.log10(positive[0]))


def top_movers(series: Sequence[Series], k: int) -> tuple[Series, ...]:
    """The ``k`` series with the largest :func:`mover_score`, in that order (ties: the
    earlier series, i.e. model order, first)."""
    ranked = sorted(range(len(series)), key=lambda i: (-mover_score(series[i]), i))
    return tuple(series[i] for i in ranked[:k])


__all__ = [
    "HealthEvent",
    "Series",
    "collect",
    "health_events",
    "layer_grad_norms",
    "layer_norms",
    "layer_update_ratios",
    "mover_score",
    "run_series",
    "top_movers",
]
