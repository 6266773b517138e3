"""Several batches merged into one report: the mean gradient, streamed batch by batch.

The data is read one batch at a time and each batch runs through the same compiled
step.  Batch ``b`` of ``n_b`` rows out of ``N`` gets the weight ``w_b = n_b / N``:

* **variables**: the report describes the weighted mean gradient ``sum_b w_b g_b``,
  accumulated in float64.  For a mean-reduced loss this is exactly the gradient of the
  loss on all ``N`` rows at once (for equal batches, the plain mean of the batch
  gradients).  Alongside: each variable's per-batch norms (min, median, max), the
  spread of the batch gradients around the mean, ``E||g - E[g]||^2`` (weighted by
  ``w_b``, summed over the variable's entries; a Welford update, so no cancellation),
  and the gradient signal-to-noise ratio ``||E[g]||^2 / E||g - E[g]||^2``.
* **inputs and layer outputs** belong to one batch each, so the full-data gradient of
  a row is ``w_b`` times its batch gradient.  Their statistics are merged exactly from
  the per-batch statistics (sums, centered sums of squares by Chan's rule, extremes,
  counts); dead units are those that are zero in every batch.
* **loss**: ``sum_b w_b L_b``, the full-data loss for a mean-reduced loss.

Nothing here holds more than one batch of data and one copy of the gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _tf, stats
from .commands.inspect.report import BatchesReport, NormSpread, VariableSpread
from .engine.gradients import EngineResult
from .loading.data import Batch

_L2, _MAX_ABS, _MEAN, _STD, _ZERO_FRAC, _NONFINITE, _DEAD = range(stats.N_FIELDS)


def norm_spread(values: Sequence[float]) -> NormSpread:
    """Min, median and max of a list of per-batch values."""
    array = np.asarray(values, dtype=np.float64)
    return NormSpread(float(array.min()), float(np.median(array)), float(array.max()))


@dataclass
class _Moments:
    """Running weighted mean and spread of one variable's batch gradients (Welford)."""

    mean: np.ndarray
    spread: float = 0.0  # sum_b w_b ||g_b - mean||^2, summed over entries
    weight: float = 0.0
    norms: list[float] = field(default_factory=list)

    def add(self, gradient: np.ndarray, weight: float) -> None:
        wide = np.asarray(gradient, dtype=np.float64)
        self.norms.append(float(np.linalg.norm(wide)))
        self.weight += weight
        delta = wide - self.mean
        self.mean += (weight / self.weight) * delta
        self.spread += float(weight * np.sum(delta * (wide - self.mean)))


@dataclass
class _MergedStats:
    """Per-tensor statistics rows merged over batches (see :func:`_merge_rows`)."""

    rows: np.ndarray | None = None  # [k, N_FIELDS], the merged statistics so far
    count: Any = 0.0  # entries of each tensor merged so far (a float vector)

    def add(self, rows: np.ndarray, entries: np.ndarray, scale: float) -> None:
        scaled = _scaled(rows, scale)
        if self.rows is None:
            self.rows, self.count = scaled, entries
            return
        self.rows = _merge_rows(self.rows, self.count, scaled, entries)
        self.count = self.count + entries


def _scaled(rows: np.ndarray, scale: float) -> np.ndarray:
    """Statistics of ``scale * tensor`` from those of ``tensor`` (``scale > 0``)."""
    out = np.array(rows, dtype=np.float64, copy=True)
    if out.size:
        out[:, [_L2, _MAX_ABS, _MEAN, _STD]] *= scale
    return out


def _merge_rows(a: np.ndarray, count_a: Any, b: np.ndarray, count_b: Any) -> np.ndarray:
    """Statistics of two tensors' concatenation from theirs (``count_*``: entries each).

    Means are combined by count, centered sums of squares by Chan's rule, norms in
    quadrature, extremes by max; fractions by count, non-finite counts add up.
    """
    total = count_a + count_b
    out = np.empty_like(a)
    mean = (count_a * a[:, _MEAN] + count_b * b[:, _MEAN]) / total
    centered = (
        count_a * a[:, _STD] ** 2
        + count_b * b[:, _STD] ** 2
        + count_a * (a[:, _MEAN] - mean) ** 2
        + count_b * (b[:, _MEAN] - mean) ** 2
    )
    out[:, _L2] = np.hypot(a[:, _L2], b[:, _L2])
    out[:, _MAX_ABS] = np.maximum(a[:, _MAX_ABS], b[:, _MAX_ABS])
    out[:, _MEAN] = mean
    out[:, _STD] = np.sqrt(centered / total)
    out[:, _ZERO_FRAC] = (count_a * a[:, _ZERO_FRAC] + count_b * b[:, _ZERO_FRAC]) / total
    out[:, _NONFINITE] = a[:, _NONFINITE] + b[:, _NONFINITE]
    out[:, _DEAD] = a[:, _DEAD]  # replaced from the merged unit masks
    return out


class BatchAccumulator:
    """Merges :class:`EngineResult` s of consecutive batches into one.

    ``total_rows`` is ``N``, the rows of all the batches that will be added.  Results
    must come from a :class:`~gradscope.engine.gradients.GradientEngine` built with
    ``for_aggregation=True``.
    """

    def __init__(self, total_rows: int) -> None:
        self.total_rows = total_rows
        self.rows_seen = 0
        self.losses: list[float] = []
        self.loss = 0.0
        self._last: EngineResult | None = None
        self._moments: list[_Moments] = []
        self._inputs: dict[str, _MergedStats] = {}
        self._activation_grads = _MergedStats()
        self._activation_values = _MergedStats()
        self._live: list[np.ndarray] = []
        self._touched: list[np.ndarray | None] = []

    def add(self, result: EngineResult, batch: Batch) -> None:
        """Merge the result of one batch."""
        aggregation = result.aggregation
        if aggregation is None:
            raise ValueError("the engine was not built with for_aggregation=True")
        rows = batch.size
        weight = rows / self.total_rows
        self.rows_seen += rows
        self.losses.append(result.loss)
        self.loss += weight * result.loss
        self._add_variables(aggregation["variables"], aggregation["touched_rows"], weight)
        for name, row in result.input_stats.items():
            entries = np.array([float(batch.inputs[name].size)])
            self._inputs.setdefault(name, _MergedStats()).add(row[None, :], entries, weight)
        self._activation_grads.add(
            result.activation_grad_stats, aggregation["activation_grad_entries"], weight
        )
        self._activation_values.add(
            result.activation_value_stats, aggregation["activation_value_entries"], 1.0
        )
        live = [np.asarray(m, dtype=bool) for m in aggregation["live_units"]]
        self._live = (
            live if not self._live else [a | b for a, b in zip(self._live, live, strict=True)]
        )
        self._last = result

    def _add_variables(
        self, gradients: list[np.ndarray], rows_touched: list[np.ndarray | None], weight: float
    ) -> None:
        if not self._moments:
            self._moments = [_Moments(np.zeros(np.shape(g), np.float64)) for g in gradients]
            self._touched = [None] * len(gradients)
        for index, (moments, gradient) in enumerate(zip(self._moments, gradients, strict=True)):
            if gradient is None:
                continue
            moments.add(gradient, weight)
            touched = rows_touched[index]
            if touched is not None:  # an Embedding: the rows its indices touched
                previous = self._touched[index]
                self._touched[index] = (
                    np.union1d(previous, touched) if previous is not None else touched
                )

    def merged(self) -> EngineResult:
        """One :class:`EngineResult` for all batches, as if they were one."""
        last = self._last
        if last is None:
            raise ValueError("no batch was added")
        variable_stats = self._variable_stats(last)
        values = self._activation_values.rows
        if values is not None and values.size:
            values = values.copy()
            values[:, _DEAD] = [
                np.nan if mask.size == 0 else 1.0 - float(np.mean(mask)) for mask in self._live
            ]
        touched = np.array(
            [-1 if t is None else int(np.size(t)) for t in self._touched], dtype=np.int64
        )
        inputs = {
            name: merged.rows[0] for name, merged in self._inputs.items() if merged.rows is not None
        }
        return EngineResult(
            loss=self.loss,
            regularization=last.regularization,
            variable_stats=variable_stats,
            weight_l2=last.weight_l2,
            rows_touched=touched if touched.size else last.rows_touched,
            input_stats=inputs,
            activation_grad_stats=_or_last(self._activation_grads.rows, last.activation_grad_stats),
            activation_value_stats=_or_last(values, last.activation_value_stats),
            tensors=None,
            meta=last.meta,
        )

    def mean_gradients(self, variables: Sequence[Any]) -> dict[str, np.ndarray]:
        """The mean gradient of each variable (float64), by variable path."""
        return {v.path: m.mean for v, m in zip(variables, self._moments, strict=True) if m.norms}

    def _variable_stats(self, last: EngineResult) -> np.ndarray:
        """Statistics of each variable's mean gradient, by the engine's own reductions."""
        tf = _tf.tensorflow()
        out = np.array(last.variable_stats, dtype=np.float64, copy=True)
        for index, moments in enumerate(self._moments):
            if moments.norms:
                out[index] = stats.tensor_stats(tf.constant(moments.mean)).numpy()
        return out

    def summary(
        self, variables: Sequence[Any], batch_size: int, limit: int | None
    ) -> BatchesReport:
        """The ``batches`` section: per-batch spread, variance and SNR per variable."""
        rows = []
        per_batch_global = np.zeros(len(self.losses))
        for variable, moments in zip(variables, self._moments, strict=True):
            if not moments.norms:
                continue
            per_batch_global += np.square(moments.norms)
            variance = moments.spread / moments.weight
            signal = float(np.sum(np.square(moments.mean)))
            rows.append(
                VariableSpread(
                    path=variable.path,
                    norms=norm_spread(moments.norms),
                    variance=variance,
                    snr=signal / variance if variance > 0 else float("inf"),
                )
            )
        return BatchesReport(
            count=len(self.losses),
            batch_size=batch_size,
            rows=self.rows_seen,
            max_batches=limit,
            losses=norm_spread(self.losses),
            global_norms=norm_spread(np.sqrt(per_batch_global).tolist()),
            variables=tuple(rows),
        )


def _or_last(merged: np.ndarray | None, fallback: np.ndarray) -> np.ndarray:
    return fallback if merged is None else merged
