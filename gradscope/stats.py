"""Tensor statistics, reduced inside the TensorFlow graph.

Each function here builds graph ops that reduce tensors to small float64 vectors, so
that a compiled step returns a few numbers per tensor instead of the tensors themselves.
:func:`batch_stats` stacks tensors of equal size and reduces them together, so the
graph does not grow by dozens of ops per tensor.
Sums are accumulated in float64: float16/bfloat16/float32 inputs neither overflow (a
float32 gradient of 1e20 squares to 1e40) nor lose digits over millions of terms.

The vector layout is :data:`FIELDS`; :func:`to_tensor_stats` and :func:`to_value_stats`
turn a fetched row into the report's dataclasses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _tf
from .report import TensorStats, ValueStats

FIELDS = ("l2", "max_abs", "mean", "std", "zero_frac", "nonfinite", "dead_frac")
N_FIELDS = len(FIELDS)


def _row_moments(rows: Any, extra_zeros: Any = 0) -> Any:
    """``[k, 6]`` float64 moments of the rows of a ``[k, n]`` matrix.

    Columns: l2, max|x|, mean, std, zero fraction, non-finite count.  ``extra_zeros``
    implicit zero entries count as part of each row (the rows of an ``IndexedSlices``
    gradient that no index touched).  Extremes and counts are exact in the tensor's own
    dtype; sums are taken in float64, the variance in two passes.
    """
    tf = _tf.tensorflow()
    extra = tf.cast(extra_zeros, tf.float64)
    stored = tf.cast(tf.shape(rows)[1], tf.float64)
    count = stored + extra
    max_abs = tf.maximum(tf.cast(tf.reduce_max(tf.abs(rows), axis=1), tf.float64), 0.0)
    zeros = tf.cast(tf.math.count_nonzero(tf.equal(rows, 0), axis=1), tf.float64) + extra
    nonfinite = stored - tf.cast(tf.math.count_nonzero(tf.math.is_finite(rows), axis=1), tf.float64)
    wide = tf.cast(rows, tf.float64)
    mean = tf.reduce_sum(wide, axis=1) / count
    centered = wide - mean[:, None]
    variance = (tf.reduce_sum(centered * centered, axis=1) + extra * mean * mean) / count
    l2 = tf.sqrt(tf.reduce_sum(wide * wide, axis=1))
    # With NaN or Inf present the sums are NaN; the true norm is NaN when a NaN is
    # present, +Inf otherwise, which is exactly what max|x| holds then.
    l2 = tf.where(nonfinite > 0, max_abs, l2)
    return tf.stack([l2, max_abs, mean, tf.sqrt(variance), zeros / count, nonfinite], axis=1)


def _row_dead_fraction(rows: Any, units: int) -> Any:
    """``[k]``: fraction of the ``units`` columns of each flattened row that are all zero."""
    tf = _tf.tensorflow()
    if units <= 0:
        return tf.fill([tf.shape(rows)[0]], tf.constant(np.nan, tf.float64))
    grid = tf.reshape(tf.equal(rows, 0), [tf.shape(rows)[0], -1, units])
    return tf.reduce_mean(tf.cast(tf.reduce_all(grid, axis=1), tf.float64), axis=1)


def _units(tensor: Any) -> int:
    """Units of an activation: its last dimension; 1 for rank 1 (one unit), 0 for scalars."""
    rank = tensor.shape.rank
    if not rank:
        return 0
    return 1 if rank == 1 else int(tensor.shape[-1] or -1)


def _compute_dtype(tensor: Any) -> Any:
    tf = _tf.tensorflow()
    return tf.float64 if tensor.dtype == tf.float64 else tf.float32


def _group_key(index: int, tensor: Any, dead_units: bool) -> tuple[Any, ...]:
    """Tensors with equal keys are stacked and reduced by the same few ops."""
    size = tensor.shape.num_elements()
    if size is None or (dead_units and _units(tensor) < 0):
        return ("alone", index)
    return (_compute_dtype(tensor), size, _units(tensor) if dead_units else None)


def _group_rows(tensors: list[Any], dead_units: bool) -> Any:
    """``[k, N_FIELDS]`` stats of same-size tensors, stacked into one ``[k, n]`` matrix."""
    tf = _tf.tensorflow()
    dtype = _compute_dtype(tensors[0])
    flat = [tf.reshape(tf.cast(t, dtype) if t.dtype != dtype else t, [-1]) for t in tensors]
    rows = tf.stack(flat) if len(flat) > 1 else tf.reshape(flat[0], [1, -1])
    dead = (
        _row_dead_fraction(rows, _units(tensors[0]))
        if dead_units
        else tf.fill([len(tensors)], tf.constant(np.nan, tf.float64))
    )
    return tf.concat([_row_moments(rows), dead[:, None]], axis=1)


def batch_stats(tensors: list[Any], *, dead_units: bool = False) -> Any:
    """``[len(tensors), N_FIELDS]`` float64 stats of dense tensors, in their order.

    Tensors of the same dtype and size are stacked and reduced together, so the graph
    grows by a few dozen ops per distinct size rather than per tensor: on a ResNet, that
    is the difference between seconds and tens of seconds of tracing and graph
    optimization.  With ``dead_units`` the last field is the fraction of dead units (see
    :func:`value_stats`); otherwise it is NaN.
    """
    tf = _tf.tensorflow()
    if not tensors:
        return tf.zeros([0, N_FIELDS], tf.float64)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(_group_key(index, tensor, dead_units), []).append(index)
    parts, order = [], []
    for indices in groups.values():
        parts.append(_group_rows([tensors[i] for i in indices], dead_units))
        order.extend(indices)
    table = tf.concat(parts, axis=0) if len(parts) > 1 else parts[0]
    if order == sorted(order):
        return table
    return tf.gather(table, np.argsort(order))


def tensor_stats(tensor: Any) -> Any:
    """Float64 vector of :data:`FIELDS` for one dense tensor (``dead_frac`` is NaN)."""
    return batch_stats([tensor])[0]


def value_stats(tensor: Any) -> Any:
    """Like :func:`tensor_stats`, with the fraction of dead units in ``dead_frac``.

    A unit is a position on the last axis; it is dead when it is exactly zero across
    every other axis (the batch, and spatial or time positions).  Rank-1 outputs have
    one unit per tensor, scalars none.
    """
    return batch_stats([tensor], dead_units=True)[0]


def indexed_slices_stats(grad: Any) -> tuple[Any, Any]:
    """Stats of the dense tensor an ``IndexedSlices`` gradient stands for, and rows touched.

    Duplicate indices are summed first (as the dense conversion would), and rows that no
    index touched count as zeros, without ever building the dense tensor.
    """
    tf = _tf.tensorflow()
    unique_rows, position = tf.unique(grad.indices)
    rows_touched = tf.size(unique_rows)
    summed = tf.math.unsorted_segment_sum(grad.values, position, rows_touched)
    dense_shape = tf.cast(grad.dense_shape, tf.int64)
    extra_zeros = tf.reduce_prod(dense_shape) - tf.cast(tf.size(summed), tf.int64)
    moments = _row_moments(tf.reshape(summed, [1, -1]), extra_zeros)[0]
    stats = tf.concat([moments, tf.constant([np.nan], tf.float64)], axis=0)
    return stats, rows_touched


def l2_norm(tensor: Any) -> Any:
    """Float64 L2 norm of ``tensor`` (a variable's weights, say)."""
    return batch_stats([tensor])[0, 0]


def _field(row: np.ndarray, name: str) -> float:
    return float(row[FIELDS.index(name)])


def to_tensor_stats(row: np.ndarray) -> TensorStats:
    """The report dataclass for one fetched stats vector."""
    return TensorStats(
        l2=_field(row, "l2"),
        max_abs=_field(row, "max_abs"),
        mean=_field(row, "mean"),
        std=_field(row, "std"),
        zero_frac=_field(row, "zero_frac"),
        nonfinite=int(_field(row, "nonfinite")),
    )


def to_value_stats(row: np.ndarray) -> ValueStats:
    """The report dataclass for one fetched activation-value stats vector."""
    dead = _field(row, "dead_frac")
    base = to_tensor_stats(row)
    return ValueStats(**vars(base), dead_frac=None if np.isnan(dead) else dead)
